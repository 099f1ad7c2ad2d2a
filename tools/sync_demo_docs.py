"""Copy a finished demo run's summary, records, Table I, field table and sanity-check summaries
into docs/demo/, and its summary and field table into the README, between the ``demo-output``
and ``field-output`` markers. Run by
``make demo-docs`` after ``make demo``; ``tests/test_readme.py`` holds the README to these files
and these files to the code."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo-output:start (make demo-docs) -->", "<!-- demo-output:end -->"
FIELD_START, FIELD_END = "<!-- field-output:start (make demo-docs) -->", "<!-- field-output:end -->"
COPIED = (
    "summary.md",
    "results.json",
    "table1.json",
    "table1.md",
    "table1-published.json",
    "table1-published.md",
    "analyses/sanity-clip/sanity.json",
    "analyses/sanity-mmcoa/sanity.json",
    "field.json",
    "field.md",
)


def replace_block(text: str, block: str, start: str = START, end: str = END) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}{end}{tail}"


def main(run: str = "runs/demo") -> int:
    run_dir = ROOT / run
    for name in COPIED:
        target = ROOT / "docs" / "demo" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / name, target)
    readme = ROOT / "README.md"
    text = replace_block(readme.read_text(), (run_dir / "summary.md").read_text())
    text = replace_block(text, (run_dir / "field.md").read_text(), FIELD_START, FIELD_END)
    readme.write_text(text)
    print(f"README.md and docs/demo/ updated from {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
