"""Tables of rendered reports, read back as rows of cells, so that tests assert on the cells of
a named row and column (or on the numbers the report computed), never on a substring that a
machine-dependent number elsewhere in the text could also produce."""

from __future__ import annotations

import re


class Table:
    def __init__(self, head: list[str], body: list[list[str]]):
        self.head = head
        self.rows = [dict(zip(head, cells)) for cells in body]

    def where(self, **match) -> list[dict]:
        """The rows whose cells equal the given values (keys: column names, spaces as ``_``)."""
        want = {k.replace("_", " ").strip(): str(v) for k, v in match.items()}
        return [r for r in self.rows if all(r.get(k) == v for k, v in want.items())]

    def column(self, name: str) -> list[str]:
        return [r[name] for r in self.rows]


def markdown_tables(text: str) -> list[Table]:
    """Every ``| a | b |`` table of a markdown text, in order."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and set("".join(block[1])) <= set("-:"):
            tables.append(Table(block[0], block[2:]))
        block = []
    return tables


def markdown_table(text: str, *head: str) -> Table:
    """The one markdown table whose header starts with ``head``."""
    found = [t for t in markdown_tables(text) if t.head[:len(head)] == list(head)]
    assert len(found) == 1, f"{len(found)} tables start with {head}"
    return found[0]


def text_table(text: str, *head: str) -> Table:
    """A plain-text table of ``msat.report`` (columns two or more spaces apart, a rule of dashes
    under the header) whose header starts with ``head``; it ends at the first blank line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = re.split(r"\s{2,}", line.strip())
        if cells[:len(head)] == list(head) and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            body = []
            for row in lines[i + 2:]:
                if not row.strip():
                    break
                body.append(re.split(r"\s{2,}", row.strip()))
            return Table(cells, body)
    raise AssertionError(f"no table starting with {head}")
