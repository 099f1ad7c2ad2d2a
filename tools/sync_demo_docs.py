"""Copy a finished demo run's summary, records, Table I and sanity-check summaries into
docs/demo/ and its summary into the README, between the ``demo-output`` markers. Run by
``make demo-docs`` after ``make demo``; ``tests/test_readme.py`` holds the README to these files
and these files to the code."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo-output:start (make demo-docs) -->", "<!-- demo-output:end -->"
COPIED = (
    "summary.md",
    "results.json",
    "table1.json",
    "table1.md",
    "table1-published.json",
    "table1-published.md",
    "analyses/sanity-clip/sanity.json",
    "analyses/sanity-mmcoa/sanity.json",
)


def replace_block(text: str, block: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main(run: str = "runs/demo") -> int:
    run_dir = ROOT / run
    for name in COPIED:
        target = ROOT / "docs" / "demo" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / name, target)
    readme = ROOT / "README.md"
    readme.write_text(replace_block(readme.read_text(), (run_dir / "summary.md").read_text()))
    print(f"README.md and docs/demo/ updated from {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
