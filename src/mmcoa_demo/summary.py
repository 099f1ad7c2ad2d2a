"""What the demo prints and the README shows, rendered from a run's files alone (so the committed
copy in docs/demo/ renders the same): Table I as the report lays it out (:mod:`mmcoa.report`),
the attack table (:func:`mmcoa.eval.format_table`), BERT-Attack's prompts and the sanity checks.
``make demo-docs`` copies a run's files to docs/demo/ and its summary into the README.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmcoa.data import DEFAULT_TEMPLATE
from mmcoa.data.base import clean_classname
from mmcoa.data.fashion_mnist import CLASSNAMES
from mmcoa.eval import format_table
from mmcoa.report import build_tables
from mmcoa.report.render import table_markdown

ZERO_SHOT_ROW = "CLIP (zero-shot)"
SANITY_ROWS = (ZERO_SHOT_ROW, "MMCoA")  # the models whose gradients the report checks
TABLE1_TITLE = "Table I (miniature): MiniLM CLIP on Fashion-MNIST"


def table1_markdown(records: list[dict], note: str = "") -> str:
    """The report's Table I of ``records`` (one row per model, then its rows of gains over the
    zero-shot model and over TeCoA) in Markdown, with the demo's title, then ``note``."""
    [table] = [t for t in build_tables(records) if t.key == "table1"]
    table.title = TABLE1_TITLE
    return table_markdown(table) + (f"\n\n{note}" if note else "")


def demo_summary(
    records: list[dict], table1_records: list[dict], sanity: dict[str, dict] | None = None
) -> str:
    """The README's demo block (``OUTPUT/summary.md``): the attack table, Table I, the
    zero-shot model's attacked prompts and the sanity checks."""
    parts = [
        f"```\n{format_table(records)}\n```",
        table1_markdown(table1_records),
        format_attacked_prompts(table1_records),
    ]
    if sanity:
        parts.append(format_sanity(sanity))
    return "\n\n".join(parts) + "\n"


def format_sanity(sanity: dict[str, dict]) -> str:
    """The gradient-masking checks of each checked row side by side, as Markdown."""
    rows = list(sanity)
    checks = {row: {c["name"]: c for c in sanity[row]["checks"]} for row in rows}
    first = sanity[rows[0]]
    plan, n = first["plan"], first["numbers"]["n_samples"]
    lines = [
        f"Gradient-masking sanity checks (Carlini et al. 2019; {n} test images, PGD step "
        f"{plan['step_size']:g}/255, check eps {plan['check_eps']:g}/255, Square "
        f"{plan['square_queries']} queries; accuracy %):",
        "",
        "| Check | " + " | ".join(rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for name in checks[rows[0]]:
        cells = [f"{checks[r][name]['result']}: {checks[r][name]['numbers']}" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_attack_record(records: list[dict], row: str = ZERO_SHOT_ROW) -> dict:
    """``row``'s BERT-Attack record in Table I."""
    [record] = [r for r in records if r.get("row") == row and r["attack"] == "bert"]
    return record


def attacked_prompts(records: list[dict], row: str = ZERO_SHOT_ROW) -> list[tuple[str, str]]:
    """(clean prompt, BERT-Attack's prompt) of each class for ``row``'s text attack."""
    clean = [DEFAULT_TEMPLATE.format(clean_classname(c)) for c in CLASSNAMES]
    return list(zip(clean, text_attack_record(records, row)["adversarial_prompts"]))


def format_attacked_prompts(records: list[dict], row: str = ZERO_SHOT_ROW) -> str:
    """The class prompts BERT-Attack (paper Eq. 4) produced against ``row``, as Markdown."""
    mlm = text_attack_record(records, row)["attack_params"]["mlm"]
    lines = [
        f"BERT-Attack's class prompts against the {row} model (candidates from {mlm}, "
        "k 10, 1 word; the paper's template):",
        "",
        "| Class prompt | Attacked prompt |",
        "|---|---|",
    ]
    lines += [f"| {clean} | {adversarial} |" for clean, adversarial in attacked_prompts(records, row)]
    return "\n".join(lines)


def sanity_path(run: Path, row: str) -> Path:
    """Where a demo run (or its copy in docs/demo) keeps ``row``'s sanity-check summary."""
    return Path(run) / "analyses" / f"sanity-{_slug(row)}" / "sanity.json"


def read_sanity(run: Path) -> dict[str, dict]:
    """{row: the sanity checks' summary} of the rows a run checked (none without the report)."""
    paths = {row: sanity_path(run, row) for row in SANITY_ROWS}
    return {row: json.loads(path.read_text())["data"] for row, path in paths.items() if path.is_file()}


def _slug(row: str) -> str:
    return "clip" if row == ZERO_SHOT_ROW else row.lower()
