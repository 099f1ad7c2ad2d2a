"""The README's demo numbers come from a committed demo run (docs/demo/, written by
``make demo-docs``), rendered by the demo's own formatters: editing a number by hand, or
changing the formatter without re-running, fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mmcoa_demo.summary import demo_summary, read_sanity

ROOT = Path(__file__).resolve().parents[1]
DEMO_DOCS = ROOT / "docs" / "demo"


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_demo_docs", ROOT / "tools" / "sync_demo_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_demo_block_is_the_committed_run_summary():
    sync = _sync_module()
    readme = (ROOT / "README.md").read_text()
    block = readme.split(sync.START, 1)[1].split(sync.END, 1)[0]
    assert block.strip() == (DEMO_DOCS / "summary.md").read_text().strip()


def test_committed_summary_is_rendered_from_the_committed_records():
    records = json.loads((DEMO_DOCS / "results.json").read_text())
    table1 = json.loads((DEMO_DOCS / "table1.json").read_text())
    sanity = read_sanity(DEMO_DOCS)
    assert set(sanity) == {"CLIP (zero-shot)", "MMCoA"}
    assert (DEMO_DOCS / "summary.md").read_text() == demo_summary(records, table1, sanity)


def test_replace_block_keeps_the_text_around_it():
    sync = _sync_module()
    text = f"before\n{sync.START}\nold\n{sync.END}\nafter\n"
    assert sync.replace_block(text, "new\n") == f"before\n{sync.START}\nnew\n{sync.END}\nafter\n"
