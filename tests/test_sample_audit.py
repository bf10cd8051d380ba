"""The bundled sample through the real worker and simulator yields exactly the expected findings,
and exercises every rule."""

from __future__ import annotations

from sqlalchemy import select

from audit.db import session_scope
from audit.models import Expense, Finding
from audit.rules import RuleCode
from cli.run import load_sample
from tests.support.platform import Platform

EXPECTED = {
    ("AMOUNT_OUTLIER", "2026-10-limpeza-extra", "info"),
    ("SUPPLIER_INACTIVE", "2026-10-elevador", "critical"),
    ("SUPPLIER_NOT_FOUND", "2026-10-portao", "critical"),
    ("NO_BANK_MATCH", "2026-10-portao", "warning"),
    ("SUPPLIER_RECENTLY_OPENED", "2026-10-jardim", "warning"),
    ("CNAE_MISMATCH", "2026-10-cameras", "info"),
    ("DUPLICATE_PAYMENT", "2026-10-bomba", "critical"),
    ("DUPLICATE_PAYMENT", "2026-10-bomba-2", "critical"),
    ("NO_BANK_MATCH", "2026-10-bomba-2", "warning"),
    ("SPLIT_PAYMENT", "2026-10-obra-1", "warning"),
    ("SPLIT_PAYMENT", "2026-10-obra-2", "warning"),
    ("SPLIT_PAYMENT", "2026-10-obra-3", "warning"),
}


def test_the_sample_batch_yields_exactly_the_expected_findings(platform: Platform) -> None:
    sample = load_sample()
    account = f"{sample['condominium']['pluggy_account_id']}-{platform.database_url[:6]}"
    with platform.sim() as sim:
        for cnpj, registration in sample["registrations"].items():
            sim.put(f"/_sim/registrations/{cnpj}", json=registration).raise_for_status()
        sim.put(f"/_sim/accounts/{account}/transactions", json=sample["transactions"])
    condominium = platform.create_condominium(account, name=sample["condominium"]["name"])
    with platform.client() as client:
        tasks = []
        for expenses in [*sample["history"], sample["batch"]]:
            response = client.post(
                "/batch-expenses", json={"condominium_id": condominium, "expenses": expenses}
            )
            assert response.status_code == 202, response.text
            tasks.append(response.json()["task_id"])
            assert platform.wait_for_status(tasks[-1], {"SUCCESS", "FAILURE"})["status"] == (
                "SUCCESS"
            )
    with session_scope(platform.database_url) as session:
        rows = session.execute(
            select(Finding.rule_code, Expense.external_id, Finding.severity)
            .join(Expense, Expense.id == Finding.expense_id)
            .where(Finding.batch_id == tasks[-1])
        ).all()
    found = [tuple(row) for row in rows]
    assert len(found) == len(set(found)) + 1  # AMOUNT_OUTLIER fires for supplier and category
    assert set(found) == EXPECTED
    assert {rule for rule, _, _ in found} == {code.value for code in RuleCode}

    with platform.client() as client:
        page = client.get(f"/batches/{tasks[-1]}/findings", params={"page_size": 100}).json()
        searched = client.get(
            "/findings", params={"condominium_id": condominium, "page_size": 100}
        ).json()
    # Every finding names the client's expense by its external_id, in both listings.
    assert {
        (f["rule_code"], f["expense_external_id"], f["severity"]) for f in page["items"]
    } == EXPECTED
    latest = [f for f in searched["items"] if f["batch_id"] == tasks[-1]]
    assert sorted((f["id"], f["expense_external_id"]) for f in latest) == sorted(
        (f["id"], f["expense_external_id"]) for f in page["items"]
    )
    # Messages about several expenses name them: three split lines, three different texts.
    split = {
        f["expense_external_id"]: f["message"]
        for f in page["items"]
        if f["rule_code"] == "SPLIT_PAYMENT"
    }
    assert len(set(split.values())) == 3
    for name, message in split.items():
        others = sorted({"2026-10-obra-1", "2026-10-obra-2", "2026-10-obra-3"} - {name})
        assert f"a despesa {name} e as despesas {others[0]} e {others[1]} são 3 pagamentos" in (
            message
        )
    duplicates = {
        f["expense_external_id"]: f["message"]
        for f in page["items"]
        if f["rule_code"] == "DUPLICATE_PAYMENT"
    }
    assert "a despesa 2026-10-bomba " in duplicates["2026-10-bomba"]
    assert "na despesa 2026-10-bomba-2 " in duplicates["2026-10-bomba"]
    assert "a despesa 2026-10-bomba-2 " in duplicates["2026-10-bomba-2"]
    assert "na despesa 2026-10-bomba " in duplicates["2026-10-bomba-2"]

    with platform.client() as client:
        report = client.get(f"/condominiums/{condominium}/report", params={"period": "2026-10"})
    assert report.status_code == 200
    body = report.json()
    assert body["expenses_audited"] == 11
    assert body["findings"]["total"] == 13
    assert {e["external_id"] for e in body["unmatched_expenses"]} == {
        "2026-10-portao",
        "2026-10-bomba-2",
    }
    assert body["top_suppliers"][0]["amount"] == "18040.00"  # the cleaning company


def test_audit_settings_are_per_condominium_and_validated(platform: Platform) -> None:
    condominium = platform.create_condominium()
    other = platform.create_condominium()
    with platform.client() as client:
        defaults = client.get(f"/condominiums/{condominium}/audit-settings").json()
        assert defaults["approval_threshold"] == "5000.00"
        assert "limpeza" in defaults["cnae_mapping"]
        changed = client.put(
            f"/condominiums/{condominium}/audit-settings",
            json={"approval_threshold": "20000.00", "match_window_days": 3},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["approval_threshold"] == "20000.00"
        assert client.get(f"/condominiums/{other}/audit-settings").json() == defaults
        bad = client.put(
            f"/condominiums/{condominium}/audit-settings",
            json={"match_window_days": -1, "unknown": True},
        )
    assert bad.status_code == 422
    fields = {tuple(e["loc"]) for e in bad.json()["detail"]}
    assert ("body", "match_window_days") in fields
    assert ("body", "unknown") in fields
