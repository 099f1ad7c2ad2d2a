"""The offline demo: a CLIP with a pretrained English text tower on Fashion-MNIST, attacked, then
made robust (``make demo``, ``mmcoa demo --output runs/demo``). The paper's pipeline in miniature:

1. :func:`pretrain_demo_clip`: the zero-shot ``minilm-clip`` (:mod:`mmcoa.models.minilm`), a ViT
   trained against the locked, pretrained MiniLM text encoder, which also proposes BERT-Attack's
   candidates (``--mlm minilm``, :mod:`mmcoa.attacks.text.mlm`);
2. the attack table (``results.json``): that model clean and under PGD, BERT-Attack, the
   multimodal attack and Co-Attack at the paper's eps 1/255;
3. :func:`run_table1`: the paper's Table I in miniature, ``ft-standard``, ``tecoa`` and ``mmcoa``
   fine-tuned (``train/<method>``) and attacked (``table1.md``, ``table1.json``; the README's
   demo block ``summary.md``, :func:`demo_summary`);
4. :func:`write_demo_report`: the analyses and ``mmcoa report`` into ``report/``.

Where the miniature departs from the paper (eps 4/255, 10 PGD steps, one short shared schedule,
...) and why: ``docs/methods.md``, "The offline demo".
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mmcoa.attacks import PGD, build_attack
from mmcoa.attacks.text.mlm import MINILM
from mmcoa.data import DEFAULT_TEMPLATE, load_dataset
from mmcoa.data.base import clean_classname
from mmcoa.data.fashion_mnist import CLASSNAMES
from mmcoa.eval import evaluate, format_table, write_records
from mmcoa.files import write_json_atomic
from mmcoa.files import atomic_path, write_text_atomic
from mmcoa.models import load_model
from mmcoa.models.minilm import MINILM_CLIP, require_minilm_dir, write_minilm_clip_config
from mmcoa.train.config import TrainConfig
from mmcoa.train.pretrain import PretrainConfig, pretrain_contrastive
from mmcoa.train.trainer import train

DEMO_MODEL = MINILM_CLIP
DEMO_DATASET = "fashion_mnist"
DEMO_MLM = MINILM
CHECKPOINT_NAME = "minilm-clip-fashion-mnist.pt"
CONFIG_NAME = f"{MINILM_CLIP}.json"
SUMMARY_NAME = "summary.md"
# LiT-style pre-training of the image tower against the locked MiniLM text tower (step 1).
PRETRAIN = PretrainConfig(lock_text=True, target_accuracy=0.80)

ZERO_SHOT_ROW = "CLIP (zero-shot)"
TABLE1_ROWS = ((ZERO_SHOT_ROW, None), ("FT-standard", "ft-standard"), ("TeCoA", "tecoa"), ("MMCoA", "mmcoa"))
TABLE1_COLUMNS = (
    ("Image Attack", "pgd"),
    ("Text Attack", "bert"),
    ("Multimodal Attack", "multimodal"),
    ("Co-Attack", "coattack"),
    ("Clean", "clean"),
)
SANITY_ROWS = (ZERO_SHOT_ROW, "MMCoA")  # the models whose gradients the report checks
TABLE1_DELTAS = (
    ("FT-standard", ZERO_SHOT_ROW),
    ("TeCoA", ZERO_SHOT_ROW),
    ("MMCoA", ZERO_SHOT_ROW),
    ("MMCoA", "TeCoA"),
)
PAPER_EPS = 1 / 255  # the paper's evaluation budget (the attack table's)
# One intra-op thread: the demo's tensors are small, and on a shared 2-core machine a second
# thread that waits for a busy core made a TeCoA step 3x slower (1.51 s against 0.46 s).
DEMO_THREADS = 1


@dataclass(frozen=True)
class SanitySettings:
    """Small budgets for the gradient-masking checks of the report (:func:`run_sanity`; units
    of 1/255), to fit the demo's time: 100 test images, PGD at eps 1, 4 (Table I's), 16 and 64
    with 50 steps, 10 / 20 / 50 steps at 4/255 (the demo's attacks run 10), Square with 500
    queries (AutoAttack's standard: 5,000)."""

    n_samples: int = 100
    eps: tuple[float, ...] = (1, 4, 16)
    steps: tuple[int, ...] = (10, 20, 50)
    large_eps: float = 64
    square_queries: int = 500


@dataclass(frozen=True)
class Table1Settings:
    """The miniature Table I: evaluation size and attacks, and the shared fine-tuning schedule
    (``docs/methods.md``, "The offline demo", says why they differ from the paper's)."""

    n_samples: int = 500  # test images, a seeded subset (the same for every row)
    eps: float = 4 / 255  # L-inf budget of the evaluation PGD and of training PGD
    eval_step_size: float = 1 / 255
    eval_steps: int = 10
    shots: str = "full"  # training images drawn from the whole train split
    max_steps: int = 100  # optimizer steps per method
    batch_size: int = 100
    lr: float = 1e-4
    train_steps: int = 2  # training PGD: the paper's 2 steps of step = eps
    text_attack_every: int = 10  # MMCoA: adversarial prompts recomputed every 10 steps
    alpha: float = 0.5
    beta: float = 0.5
    methods: tuple[str, ...] = ("ft-standard", "tecoa", "mmcoa")
    report_samples: int = 200  # test images of the report's eps sweep and interpolation
    sweep_eps: tuple[float, ...] = (1, 2, 4)  # units of 1/255 (paper Fig. 6)
    lambdas: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 1)  # paper Fig. 8
    sanity: SanitySettings | None = field(default_factory=SanitySettings)

    def train_config(
        self,
        method: str,
        *,
        checkpoint: Path,
        mlm: str,
        output: Path,
        data_root: str | None,
        device: str,
        seed: int,
    ) -> TrainConfig:
        """``method``'s fine-tuning of the zero-shot ``checkpoint``: the schedule every method
        shares here, passed explicitly (not the method's own defaults)."""
        return TrainConfig(
            method=method,
            model=DEMO_MODEL,
            pretrained=str(checkpoint),
            dataset=DEMO_DATASET,
            data_root=data_root,
            shots=self.shots,
            epochs=1,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            optimizer="adamw",
            lr=self.lr,
            weight_decay=0.2,
            schedule="constant",
            warmup_steps=0,
            adv_image_weight=self.alpha,
            adv_text_weight=self.beta,
            train_eps=self.eps,
            train_step_size=self.eps,
            train_steps=self.train_steps,
            text_attack_every=self.text_attack_every,
            mlm=mlm,
            seed=seed,
            device=device,
            output=str(output),
        )

    def pgd_params(self, eps: float | None = None) -> dict:
        return {
            "eps": self.eps if eps is None else eps,
            "step_size": self.eval_step_size,
            "n_steps": self.eval_steps,
        }

    def attacks(self, mlm: str) -> list:
        """Clean, image (PGD), text (BERT-Attack), multimodal (both, independently) and
        Co-Attack (BERT-Attack, then PGD guided by the attacked prompts)."""
        pgd = self.pgd_params()
        return [
            build_attack("clean"),
            PGD(**pgd),
            build_attack("bert", mlm=mlm),
            build_attack("multimodal", mlm=mlm, **pgd),
            build_attack("coattack", mlm=mlm, **pgd),
        ]

    def describe(self, mlm: str, n_train_images: int | None = None) -> str:
        eps, step = _per255(self.eps), _per255(self.eval_step_size)
        images = f" ({n_train_images:,} images seen)" if n_train_images else ""
        return (
            f"Robust accuracy (%) on {self.n_samples} Fashion-MNIST test images (a seeded "
            f"subset, the same for every row).\n"
            f"Image attack: L-inf PGD eps {eps}, step {step}, {self.eval_steps} steps, one "
            f"random start. Text attack: BERT-Attack on the class prompts (MLM {mlm}, k 10, "
            f"1 word). Multimodal attack: both, independently (the paper's). Co-Attack: "
            f"BERT-Attack, then {self.eval_steps} image steps against the attacked prompts "
            f"(paper Table V). Each attack is run against the row's own model.\n"
            f"Fine-tuning (each row from the zero-shot checkpoint): {self.max_steps} steps of "
            f"{self.batch_size} images{images}, AdamW lr {self.lr:g}, weight decay 0.2; "
            f"training PGD eps {eps}, step {eps}, {self.train_steps} steps; MMCoA alpha "
            f"{self.alpha:g}, beta {self.beta:g}, adversarial prompts every "
            f"{self.text_attack_every} step(s)."
        )


def demo_attacks(mlm: str, steps: int = Table1Settings.eval_steps) -> list:
    """The attack table, at the paper's eps 1/255: clean, PGD (also at Table I's 4/255, to
    show why Table I uses it), BERT-Attack, the multimodal attack and Co-Attack."""
    image = {"eps": PAPER_EPS, "step_size": 1 / 255, "n_steps": steps}
    return [
        build_attack("clean"),
        PGD(**image),
        PGD(**{**image, "eps": Table1Settings.eps}),
        build_attack("bert", mlm=mlm),
        build_attack("multimodal", mlm=mlm, **image),
        build_attack("coattack", mlm=mlm, **image),
    ]


def run_demo(
    output: str | Path,
    *,
    data_root: str | None = None,
    device: str = "cpu",
    n_samples: int = 500,
    seed: int = 0,
    progress: bool = True,
    mlm: str = DEMO_MLM,
    pretrain: PretrainConfig = PRETRAIN,
    table1: Table1Settings | None = Table1Settings(),
    show_table: bool = True,
    threads: int | None = DEMO_THREADS,
) -> list[dict]:
    """Run the whole demo; returns the result records also written to ``output/results.json``.

    ``mlm`` is BERT-Attack's candidate source (``minilm``, or a BERT directory); ``pretrain``
    step 1's schedule; ``table1`` the miniature Table I (``None`` skips it and the report);
    ``show_table`` prints the attack table, Table I and where the report is; ``threads`` the
    torch intra-op threads while it runs (None: torch's default)."""
    require_minilm_dir("the demo")
    output = Path(output)
    with torch_threads(threads):
        train_set = load_dataset(DEMO_DATASET, split="train", root=data_root)
        load_dataset(DEMO_DATASET, split="test", root=data_root)  # fail now, not after training
        checkpoint = pretrain_demo_clip(
            output, train_set, pretrain, device=device, seed=seed, progress=progress
        )
        steps = (table1 or Table1Settings()).eval_steps
        records = evaluate(
            DEMO_MODEL,
            DEMO_DATASET,
            demo_attacks(mlm, steps),
            pretrained=str(checkpoint),
            data_root=data_root,
            n_samples=n_samples,
            batch_size=250,
            seed=seed,
            device=device,
            progress=progress,
        )
        write_records(output / "results.json", records)
        _show(show_table, format_table(records), f"results written to {output / 'results.json'}\n")
        if table1 is not None:
            run = {"data_root": data_root, "device": device, "seed": seed, "progress": progress}
            table1_records, table = run_table1(output, checkpoint, mlm, table1, **run)
            _show(
                show_table,
                table,
                f"Table I written to {output / 'table1.md'} (records: {output / 'table1.json'})",
            )
            page = write_demo_report(output, checkpoint, mlm, table1, **run)
            _show(
                show_table,
                f"report (tables, eps sweep, interpolation, gallery, sanity checks) written to {page}",
            )
            summary = demo_summary(records, table1_records, read_sanity(output))
            write_text_atomic(output / SUMMARY_NAME, summary)
    return records


def pretrain_demo_clip(
    output: Path,
    train_set,
    config: PretrainConfig,
    *,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Step 1: ``minilm-clip`` from a seeded random image tower and the pretrained MiniLM text
    tower, trained LiT-style (``config.lock_text``); writes the checkpoint, its open_clip
    configuration and ``pretrain.json`` (the history); returns the checkpoint's path."""
    torch.manual_seed(seed)
    model = load_model(DEMO_MODEL, pretrained="random", device=device)
    summary = pretrain_contrastive(model, train_set, _seeded(config, seed), progress=progress)
    write_json_atomic(output / "pretrain.json", summary)
    write_minilm_clip_config(output / CONFIG_NAME)
    return save_checkpoint(model, output / CHECKPOINT_NAME)


def run_table1(
    output: Path,
    checkpoint: Path,
    mlm: str,
    settings: Table1Settings,
    *,
    data_root: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict], str]:
    """Fine-tune, evaluate and tabulate; writes ``table1.json`` and ``table1.md`` under
    ``output`` and returns (records, markdown table)."""
    output = Path(output)
    weights, n_train = {None: checkpoint}, None
    for method in settings.methods:
        run = output / "train" / method
        shutil.rmtree(run, ignore_errors=True)  # a fresh run, not rows appended to an old one
        config = settings.train_config(
            method, checkpoint=checkpoint, mlm=mlm, output=run, data_root=data_root, device=device, seed=seed
        )
        n_train = train(config, progress=progress)["steps"] * settings.batch_size
        weights[method] = run / "final.pt"
    records = []
    for row, method in TABLE1_ROWS:
        if method in weights:
            found = evaluate(
                DEMO_MODEL,
                DEMO_DATASET,
                settings.attacks(mlm),
                pretrained=str(weights[method]),
                data_root=data_root,
                n_samples=settings.n_samples,
                batch_size=250,
                seed=seed,
                device=device,
                progress=progress,
            )
            records += [{**record, "row": row, "method": method} for record in found]
    write_records(output / "table1.json", records)
    table = format_table1(records, settings.describe(mlm, n_train))
    write_text_atomic(output / "table1.md", table + "\n")
    return records, table


def write_demo_report(
    output: Path,
    checkpoint: Path,
    mlm: str,
    settings: Table1Settings,
    *,
    data_root: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """The eps sweep (paper Fig. 6: zero-shot, TeCoA and MMCoA under the image and multimodal
    attacks at each of ``sweep_eps``), the weight interpolation from the zero-shot model to
    MMCoA (Fig. 8), a gallery of attacks on the zero-shot model and the sanity checks of the
    zero-shot model and MMCoA into ``OUTPUT/analyses``, then ``mmcoa report`` over Table I and
    them into ``OUTPUT/report``; returns the report's HTML path."""
    from mmcoa.analysis import (
        eps_sweep,
        gallery,
        interpolation,
        plot_eps_sweep,
        plot_gallery,
        plot_interpolation,
    )
    from mmcoa.report import write_report

    test_set = load_dataset(DEMO_DATASET, split="test", root=data_root)
    models = {
        row: load_model(DEMO_MODEL, pretrained=str(weights), device=device)
        for row, weights in _report_weights(output, checkpoint, settings).items()
    }
    steps = {"step_size": settings.eval_step_size, "n_steps": settings.eval_steps}
    common = {"n_samples": settings.report_samples, "batch_size": 250, "seed": seed, "progress": progress}
    analyses = output / "analyses"
    sweep = eps_sweep(
        models,
        test_set,
        eps=settings.sweep_eps,
        attacks=("pgd", "multimodal"),
        attack_params={**steps, "mlm": mlm},
        **common,
    )
    write_records(analyses / "eps_sweep_records.json", sweep)
    plot_eps_sweep(sweep, analyses)
    if "MMCoA" in models:
        path = interpolation(
            models[ZERO_SHOT_ROW],
            models["MMCoA"],
            test_set,
            lambdas=settings.lambdas,
            attacks=("clean", "pgd"),
            attack_params={"eps": settings.eps, **steps},
            **common,
        )
        write_records(analyses / "interpolation_records.json", path)
        plot_interpolation(path, analyses)
    examples = gallery(
        models[ZERO_SHOT_ROW],
        test_set,
        ("pgd", "multimodal"),
        per_attack=2,
        attack_params={"eps": settings.eps, **steps, "mlm": mlm},
        seed=seed,
    )
    plot_gallery(examples, analyses)
    if settings.sanity is not None:
        write_sanity_checks(models, test_set, settings, analyses, seed=seed)
    return write_report(
        [output / "table1.json", analyses],
        output / "report",
        title="mmcoa demo: MiniLM CLIP on Fashion-MNIST",
    )


def write_sanity_checks(
    models: dict, test_set, settings: Table1Settings, analyses: Path, *, seed: int = 0
) -> dict[str, dict]:
    """The gradient-masking checks (Carlini et al. 2019) of the zero-shot model and of MMCoA,
    at Table I's eps and step size, into ``analyses/sanity-<row>/``; returns their summaries."""
    from mmcoa.analysis import run_sanity

    plan = settings.sanity
    summaries = {}
    for row in SANITY_ROWS:
        if row in models:
            summaries[row] = run_sanity(
                models[row],
                test_set,
                eps=plan.eps,
                steps=plan.steps,
                check_eps=settings.eps * 255,
                large_eps=plan.large_eps,
                square_queries=plan.square_queries,
                step_size=settings.eval_step_size * 255,
                n_samples=plan.n_samples,
                batch_size=250,
                seed=seed,
                output_dir=sanity_path(analyses.parent, row).parent,
            )
    return summaries


def sanity_path(run: Path, row: str) -> Path:
    """Where a demo run (or its copy in docs/demo) keeps ``row``'s sanity-check summary."""
    return Path(run) / "analyses" / f"sanity-{_slug(row)}" / "sanity.json"


def read_sanity(run: Path) -> dict[str, dict]:
    """{row: the sanity checks' summary} of the rows a run checked (none without the report)."""
    paths = {row: sanity_path(run, row) for row in SANITY_ROWS}
    return {row: json.loads(path.read_text())["data"] for row, path in paths.items() if path.is_file()}


def _report_weights(output: Path, checkpoint: Path, settings: Table1Settings) -> dict[str, Path]:
    """The zero-shot checkpoint and the fine-tuned TeCoA and MMCoA weights, by row name."""
    rows = {method: row for row, method in TABLE1_ROWS}
    weights = {ZERO_SHOT_ROW: checkpoint}
    for method in ("tecoa", "mmcoa"):
        if method in settings.methods:
            weights[rows[method]] = output / "train" / method / "final.pt"
    return weights


def demo_summary(
    records: list[dict], table1_records: list[dict], sanity: dict[str, dict] | None = None
) -> str:
    """The README's demo block (``OUTPUT/summary.md``): the attack table, Table I, the
    zero-shot model's attacked prompts and the sanity checks, all rendered from the run's
    records and summaries (``make demo-docs`` copies them to docs/demo/)."""
    parts = [
        f"```\n{format_table(records)}\n```",
        format_table1(table1_records),
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


def table1_accuracies(records: list[dict]) -> dict[str, dict[str, float]]:
    """{row: {column: accuracy in %}} from Table I records."""
    attack_to_column = {attack: column for column, attack in TABLE1_COLUMNS}
    table: dict[str, dict[str, float]] = {}
    for record in records:
        table.setdefault(record["row"], {})[attack_to_column[record["attack"]]] = 100 * record["accuracy"]
    return table


def format_table1(records: list[dict], note: str = "") -> str:
    """The paper's Table I layout in Markdown (plus a Co-Attack column, the paper's Table V):
    one row per model, then the delta rows."""
    table = table1_accuracies(records)
    columns = [column for column, _ in TABLE1_COLUMNS]
    lines = [
        "## Table I (miniature): MiniLM CLIP on Fashion-MNIST",
        "",
        "| Method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row, _ in TABLE1_ROWS:
        if row in table:
            lines.append(f"| {row} | " + " | ".join(f"{table[row][c]:.1f}" for c in columns) + " |")
    for minuend, subtrahend in TABLE1_DELTAS:
        if minuend in table and subtrahend in table:
            name = "CLIP" if subtrahend == ZERO_SHOT_ROW else subtrahend
            cells = [_signed(table[minuend][c] - table[subtrahend][c]) for c in columns]
            lines.append(f"| {minuend} − {name} | " + " | ".join(cells) + " |")
    if note:
        lines += [""] + note.splitlines()
    return "\n".join(lines)


def save_checkpoint(model, path: Path) -> Path:
    """Save the backend model's state dict (loadable by plain open_clip) atomically."""
    with atomic_path(path) as tmp:
        torch.save(model.model.state_dict(), tmp)
    return path


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` torch intra-op threads (None: leave the setting alone)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _seeded(config: PretrainConfig, seed: int) -> PretrainConfig:
    return replace(config, seed=seed)


def _show(enabled: bool, *lines: str) -> None:
    if enabled:
        print(*lines, sep="\n")


def _slug(row: str) -> str:
    return "clip" if row == ZERO_SHOT_ROW else row.lower()


def _signed(value: float) -> str:
    value = round(value, 1) + 0.0  # no "-0.0"
    return f"+{value:.1f}" if value > 0 else (f"−{-value:.1f}" if value < 0 else "0.0")


def _per255(value: float) -> str:
    return f"{value * 255:g}/255"
