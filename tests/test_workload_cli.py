"""`condo-audit workload generate`: files that agree with their manifest, repeatable to the byte."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from audit.cnpj import normalize_cnpj
from cli import workload


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="condo-audit")
    workload.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_writes_what_the_manifest_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w"
    assert (
        run(["workload", "generate", "--condominiums", "12", "--seed", "5", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["summary"]
    assert f"expenses            {summary['expenses']:,}" in printed

    condominiums = lines(out / "condominiums.jsonl")
    batches = lines(out / "batches.jsonl")
    transactions = lines(out / "transactions.jsonl")
    suppliers = lines(out / "suppliers.jsonl")
    planted = lines(out / "planted.jsonl")
    assert len(condominiums) == len(batches) == summary["condominiums"] == 12
    assert [c["ref"] for c in condominiums] == [b["ref"] for b in batches]
    assert sum(len(b["expenses"]) for b in batches) == summary["expenses"]
    assert len(transactions) == summary["transactions"]
    assert len(suppliers) == summary["unique_cnpjs"]
    assert len(planted) == sum(summary["planted"].values())
    used = {normalize_cnpj(e["supplier_cnpj"]) for b in batches for e in b["expenses"]}
    assert used == {s["cnpj"] for s in suppliers}
    assert {p["supplier_cnpj"] for p in planted} <= used
    assert {"name", "cnpj", "pluggy_account_id"} <= set(condominiums[0])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", "9"), ("b", "9"), ("c", "10")):
        args = ["workload", "generate", "--condominiums", "10", "--seed", seed]
        assert run([*args, "--out", str(tmp_path / name)]) == 0
    for file in ("batches.jsonl", "transactions.jsonl", "suppliers.jsonl", "planted.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()


def test_debits_only_leaves_out_the_fee_credits(tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["workload", "generate", "--condominiums", "10", "--transactions", "debits"]
    assert run([*args, "--out", str(out)]) == 0
    types = {t["type"] for t in lines(out / "transactions.jsonl")}
    assert types == {"DEBIT"}
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["credit_transactions"] == 0


def test_rejects_condominium_count_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run(["workload", "generate", "--condominiums", "0", "--out", str(tmp_path)])
