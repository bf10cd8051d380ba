"""The README's examples as data: its ```http blocks parsed into requests and documented
answers, and a matcher that says where a real answer departs from the documented one.

The notation the README uses, and what each part means here:

- a request: `METHOD /path`, header lines, a blank line, a JSON body (optional);
- its answer: a line `STATUS {json}` (the JSON may span lines);
- `"6f1c..."` (hex, then `...`, the whole string): an id; its first real value is bound to
  the token, later uses must be the same value, and requests further on get it substituted;
- `...` inside a string (`"ca_..."`, `"http://127.0.0.1:8000/tasks/0b6e..."`): any text
  there; `"..."` alone: any value, null included; `{...}`: any object;
- `, ...}` or `, ...]` at the end of an object or list: more keys or items may follow.

Everything else is literal: keys must be there, values must be equal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"

ANY = "\u2026any"  # a value that matches anything
MORE = "\u2026more"  # key or list item: more may follow
ID_TOKEN = re.compile(r"^[0-9a-f]+\.\.\.$")
STATUS_LINE = re.compile(r"^(\d{3}) (.*)$", re.DOTALL)


@dataclass
class HttpExample:
    """One ```http block: a request, and the answer the README documents (if any)."""

    method: str
    target: str
    headers: dict[str, str]
    body: str
    status: int | None
    answer: Any  # the documented JSON, with ANY / MORE markers
    source: str = field(repr=False)


def http_blocks(text: str | None = None) -> list[str]:
    text = README.read_text(encoding="utf-8") if text is None else text
    return re.findall(r"^```http\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def parse_block(block: str) -> HttpExample:
    lines = block.rstrip("\n").split("\n")
    method, target = lines[0].split(" ", 1)
    headers: dict[str, str] = {}
    index = 1
    while index < len(lines) and lines[index].strip():
        name, value = lines[index].split(":", 1)
        headers[name.strip().lower()] = value.strip()
        index += 1
    rest = "\n".join(lines[index:]).strip()
    status: int | None = None
    answer: Any = None
    body = rest
    # The answer starts at the first line that begins with a status code.
    match = re.search(r"^\d{3} ", rest, flags=re.MULTILINE)
    if match:
        body = rest[: match.start()].strip()
        status_match = STATUS_LINE.match(rest[match.start() :])
        assert status_match is not None
        status = int(status_match.group(1))
        answer = parse_documented(status_match.group(2))
    return HttpExample(method, target, headers, body, status, answer, block)


def parse_documented(text: str) -> Any:
    """The README's JSON with its `...` notation turned into markers."""
    text = re.sub(r"\{\s*\.\.\.\s*\}", lambda _: json.dumps(ANY), text)
    text = re.sub(r",\s*\.\.\.\s*\}", lambda _: f', "{MORE}": true}}', text)
    text = re.sub(r",\s*\.\.\.\s*\]", lambda _: f', "{MORE}"]', text)
    return json.loads(text)


@dataclass
class Matcher:
    """Compares real answers with documented ones, binding the ids it meets."""

    bindings: dict[str, str] = field(default_factory=dict)
    replacements: dict[str, str] = field(default_factory=dict)  # documented text -> real
    literal_keys: frozenset[str] | None = None  # None: every literal compared exactly

    def substitute(self, text: str) -> str:
        """A documented request made real: bound ids and replacements put in."""
        for documented, real in {**self.replacements, **self.bindings}.items():
            text = text.replace(documented, real)
        return text

    def compare(self, documented: Any, actual: Any, where: str = "$") -> list[str]:
        return self._compare(documented, actual, where, exact=self.literal_keys is None)

    def _compare(self, documented: Any, actual: Any, where: str, exact: bool) -> list[str]:
        if documented == ANY or documented == "...":
            return []
        if isinstance(documented, dict):
            if not isinstance(actual, dict):
                return [f"{where}: documented an object, got {actual!r}"]
            problems: list[str] = []
            keys = [k for k in documented if k != MORE]
            for key in keys:
                if key not in actual:
                    problems.append(f"{where}.{key}: documented, missing from the answer")
                    continue
                keep = exact or (self.literal_keys is not None and key in self.literal_keys)
                problems += self._compare(documented[key], actual[key], f"{where}.{key}", keep)
            if MORE not in documented and set(actual) - set(keys):
                problems.append(f"{where}: undocumented keys {sorted(set(actual) - set(keys))}")
            return problems
        if isinstance(documented, list):
            if not isinstance(actual, list):
                return [f"{where}: documented a list, got {actual!r}"]
            items = [d for d in documented if d != MORE]
            if len(actual) < len(items) or (MORE not in documented and len(actual) > len(items)):
                return [f"{where}: documented {len(items)} items, got {len(actual)}"]
            problems = []
            for k, item in enumerate(items):
                problems += self._compare(item, actual[k], f"{where}[{k}]", exact)
            return problems
        if isinstance(documented, str) and "..." in documented:
            return self._compare_pattern(documented, actual, where)
        if type(documented) is not type(actual) and not (
            isinstance(documented, int | float) and isinstance(actual, int | float)
        ):
            return [f"{where}: documented {documented!r}, got {actual!r}"]
        if isinstance(documented, str):
            documented = self.substitute(documented)
        if exact and documented != actual:
            return [f"{where}: documented {documented!r}, got {actual!r}"]
        return []

    def _compare_pattern(self, documented: str, actual: Any, where: str) -> list[str]:
        if not isinstance(actual, str):
            return [f"{where}: documented a string like {documented!r}, got {actual!r}"]
        if ID_TOKEN.match(documented):
            bound = self.bindings.setdefault(documented, actual)
            if bound != actual:
                return [f"{where}: {documented} was {bound!r} before, now {actual!r}"]
            return []
        pattern = re.escape(self.substitute(documented)).replace(re.escape("..."), ".+")
        if not re.fullmatch(pattern, actual, flags=re.DOTALL):
            return [f"{where}: {actual!r} does not look like {documented!r}"]
        return []
