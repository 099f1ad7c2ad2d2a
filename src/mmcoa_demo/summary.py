"""What the demo prints and the README shows, rendered from a run's files alone (so the committed
copy in docs/demo/ renders the same): Table I under each profile as the report lays it out
(:mod:`mmcoa.report`), which of the paper's findings hold under each (:func:`findings`), the
attack table (:func:`mmcoa.eval.format_table`), BERT-Attack's prompts and the sanity checks.
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
from mmcoa.profiles import CORRECTED
from mmcoa.report.render import table_markdown

ZERO_SHOT_ROW = "CLIP (zero-shot)"
SANITY_ROWS = (ZERO_SHOT_ROW, "MMCoA")  # the models whose gradients the report checks
TABLE1_TITLE = "Table I (miniature): MiniLM CLIP on Fashion-MNIST"
ABOUT_EQUAL = 2.0  # percentage points: finding (d)'s "about equal" (one binomial s.e. at 500 images)


def table1_markdown(records: list[dict], note: str = "", profile: str = CORRECTED) -> str:
    """The report's Table I of ``records`` (one row per model, then its rows of gains over the
    zero-shot model and over TeCoA) in Markdown, with the demo's title and ``profile``, then
    ``note``."""
    [table] = [t for t in build_tables(records) if t.key == "table1"]
    table.title = f"{TABLE1_TITLE}, {profile} profile"
    return table_markdown(table) + (f"\n\n{note}" if note else "")


def demo_summary(
    records: list[dict], table1_by_profile: dict[str, list[dict]], sanity: dict[str, dict] | None = None
) -> str:
    """The README's demo block (``OUTPUT/summary.md``): the attack table, Table I under each
    profile, the paper's findings under each, the zero-shot model's attacked prompts under each
    profile and the sanity checks."""
    parts = [f"```\n{format_table(records)}\n```"]
    parts += [table1_markdown(rows, profile=profile) for profile, rows in table1_by_profile.items()]
    if len(table1_by_profile) > 1:
        parts.append(format_findings(table1_by_profile))
    parts += [format_attacked_prompts(rows, profile=profile) for profile, rows in table1_by_profile.items()]
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


def format_attacked_prompts(records: list[dict], row: str = ZERO_SHOT_ROW, profile: str = CORRECTED) -> str:
    """The class prompts BERT-Attack (paper Eq. 4) produced against ``row``, as Markdown."""
    params = text_attack_record(records, row)["attack_params"]
    position = params.get("candidate_position", "own")
    lines = [
        f"BERT-Attack's class prompts against the {row} model, {profile} profile (candidates "
        f"from {params['mlm']} at each word's {position} position, k 10, 1 word; the paper's template):",
        "",
        "| Class prompt | Attacked prompt |",
        "|---|---|",
    ]
    lines += [f"| {clean} | {adversarial} |" for clean, adversarial in attacked_prompts(records, row)]
    return "\n".join(lines)


ATTACK_COLUMNS = {"pgd": "image", "bert": "text", "multimodal": "multimodal", "coattack": "Co-Attack"}


def accuracies(records: list[dict]) -> dict[tuple[str, str], float]:
    """{(row, attack): robust accuracy in %} of Table I's records."""
    return {(r["row"], r["attack"]): 100 * r["accuracy"] for r in records}


def findings(records: list[dict]) -> list[tuple[str, bool, str]]:
    """The paper's Table I findings checked on one Table I: (finding, holds, the numbers)."""
    acc = accuracies(records)
    zs = {a: acc[(ZERO_SHOT_ROW, a)] for a in ("clean", "pgd", "bert")}
    fine_tuned = sorted({row for row, _ in acc} - {ZERO_SHOT_ROW})
    below = [
        f"{row} {ATTACK_COLUMNS[a]} {acc[(row, a)]:.1f} <= {acc[(ZERO_SHOT_ROW, a)]:.1f}"
        for row in fine_tuned
        for a in ATTACK_COLUMNS
        if acc[(row, a)] <= acc[(ZERO_SHOT_ROW, a)]
    ]
    text_gap = {a: acc[("MMCoA", a)] - acc[("TeCoA", a)] for a in ("bert", "multimodal")}
    image_gap = acc[("MMCoA", "pgd")] - acc[("TeCoA", "pgd")]
    return [
        (
            "(a) zero-shot CLIP: image attack < text attack < clean",
            zs["pgd"] < zs["bert"] < zs["clean"],
            f"image {zs['pgd']:.1f}, text {zs['bert']:.1f}, clean {zs['clean']:.1f}",
        ),
        (
            "(b) every fine-tuned row above CLIP in every attack column",
            not below,
            "; ".join(below) or "all above",
        ),
        (
            "(c) MMCoA above TeCoA under the text and multimodal attacks",
            all(gap > 0 for gap in text_gap.values()),
            f"MMCoA - TeCoA: text {text_gap['bert']:+.1f}, multimodal {text_gap['multimodal']:+.1f}",
        ),
        (
            f"(d) TeCoA about equal to MMCoA under the image attack (within {ABOUT_EQUAL:g} points)",
            abs(image_gap) <= ABOUT_EQUAL,
            f"MMCoA - TeCoA: image {image_gap:+.1f}",
        ),
    ]


def format_findings(table1_by_profile: dict[str, list[dict]]) -> str:
    """Which of the paper's findings hold under each profile, and what each one therefore
    depends on, as Markdown (computed from the tables, never typed)."""
    profiles = list(table1_by_profile)
    checked = {p: findings(rows) for p, rows in table1_by_profile.items()}
    lines = [
        "The paper's Table I findings under each profile (robust accuracy %):",
        "",
        "| Finding | " + " | ".join(profiles) + " | depends on |",
        "|---|" + "---|" * (len(profiles) + 1),
    ]
    for index, (name, *_rest) in enumerate(checked[profiles[0]]):
        cells = [checked[p][index] for p in profiles]
        shown = [f"{'holds' if holds else 'fails'}: {numbers}" for _, holds, numbers in cells]
        lines.append(f"| {name} | " + " | ".join(shown) + f" | {_depends(profiles, [c[1] for c in cells])} |")
    return "\n".join(lines)


def _depends(profiles: list[str], holds: list[bool]) -> str:
    """What a finding rests on, from where it holds: every profile (the method), only the
    published one (the published code's behaviour), or none here."""
    if all(holds):
        return "the method (holds under every profile)"
    if not any(holds):
        return "neither (holds under no profile of this miniature)"
    where = ", ".join(p for p, h in zip(profiles, holds) if h)
    return f"the {where} behaviour (holds only under it)"


def sanity_path(run: Path, row: str) -> Path:
    """Where a demo run (or its copy in docs/demo) keeps ``row``'s sanity-check summary."""
    return Path(run) / "analyses" / f"sanity-{_slug(row)}" / "sanity.json"


def read_sanity(run: Path) -> dict[str, dict]:
    """{row: the sanity checks' summary} of the rows a run checked (none without the report)."""
    paths = {row: sanity_path(run, row) for row in SANITY_ROWS}
    return {row: json.loads(path.read_text())["data"] for row, path in paths.items() if path.is_file()}


def _slug(row: str) -> str:
    return "clip" if row == ZERO_SHOT_ROW else row.lower()
