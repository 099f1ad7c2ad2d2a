"""The README's demo numbers come from a committed demo run (docs/demo/, written by
``make demo-docs``), rendered by the demo's own formatters: editing a number by hand, or
changing the formatter without re-running, fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mmcoa_demo.demo import TABLE1_PROFILES, table1_name
from mmcoa_demo.summary import demo_summary, findings, read_sanity

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
    by_profile = {
        profile: json.loads((DEMO_DOCS / f"{table1_name(profile)}.json").read_text())
        for profile in TABLE1_PROFILES
    }
    sanity = read_sanity(DEMO_DOCS)
    assert set(sanity) == {"CLIP (zero-shot)", "MMCoA"}
    assert (DEMO_DOCS / "summary.md").read_text() == demo_summary(records, by_profile, sanity)


def test_the_readmes_findings_are_the_committed_runs():
    """The README's words on each finding (holds / fails under each profile) follow the
    findings table the committed run renders."""
    by_profile = {
        profile: json.loads((DEMO_DOCS / f"{table1_name(profile)}.json").read_text())
        for profile in TABLE1_PROFILES
    }
    readme = (ROOT / "README.md").read_text()
    for index, (name, *_rest) in enumerate(findings(by_profile["corrected"])):
        verdicts = [findings(rows)[index][1] for rows in by_profile.values()]
        said = {
            (True, True): "holds under both profiles",
            (False, True): "holds only under the published profile",
            (True, False): "holds only under the corrected profile",
            (False, False): "holds under neither profile",
        }[tuple(verdicts)]
        assert f"{name[:3]} {said}" in readme, name


def test_readme_field_block_is_the_committed_field_table():
    from mmcoa_demo.demo import Table1Settings
    from mmcoa_demo.field import field_markdown

    sync = _sync_module()
    readme = (ROOT / "README.md").read_text()
    block = readme.split(sync.FIELD_START, 1)[1].split(sync.FIELD_END, 1)[0]
    committed = (DEMO_DOCS / "field.md").read_text()
    assert block.strip() == committed.strip()
    records = json.loads((DEMO_DOCS / "field.json").read_text())
    assert committed == field_markdown(records, Table1Settings())


def test_replace_block_keeps_the_text_around_it():
    sync = _sync_module()
    text = f"before\n{sync.START}\nold\n{sync.END}\nafter\n"
    assert sync.replace_block(text, "new\n") == f"before\n{sync.START}\nnew\n{sync.END}\nafter\n"
