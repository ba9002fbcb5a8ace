"""docs/reliability.md, the catalogue of bad inputs, names only tests that exist: every row of its
tables cites at least one ``tests/<file>.py::<test>``, and each is a ``def`` in that file."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _rows():
    """The body rows of the doc's tables (header and separator rows left out)."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not line.startswith(("| case |", "| ---")):
            rows.append(line)
    return rows


def test_every_row_cites_a_test_and_there_are_at_least_25():
    rows = _rows()
    assert len(rows) >= 25, len(rows)
    uncited = [row[:80] for row in rows if not REF.search(row.split("|")[-2])]
    assert not uncited, uncited


def test_every_cited_test_exists():
    refs = {m.groups() for row in _rows() for m in REF.finditer(row)}
    assert refs
    missing = []
    for path, name in sorted(refs):
        source = ROOT / path
        if not source.is_file() or not re.search(rf"^def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"


def test_readme_links_the_catalogue():
    assert "(docs/reliability.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
