"""The offline demo's pipeline (``mmcoa demo --output runs/demo``): a CLIP with a pretrained
English text tower on Fashion-MNIST, attacked, then made robust; the paper's pipeline in miniature.

1. :func:`pretrain_demo_clip`: the zero-shot ``minilm-clip``, a ViT trained against the locked,
   pretrained MiniLM text encoder (:mod:`mmcoa_demo.pretrain`), which also proposes BERT-Attack's
   candidates (``--mlm minilm``);
2. the attack table (``results.json``): that model clean and under each attack at eps 1/255;
3. Table I in miniature: ``ft-standard``, ``tecoa`` and ``mmcoa`` fine-tuned by the library's
   trainer (``train/<method>``), evaluated by the suite runner from the suite file the demo
   writes (``table1.yaml``, run in ``table1-suite/``), laid out by the report (``table1.md``,
   ``table1.json``; ``summary.md`` is the README's demo block);
4. :func:`write_demo_report`: the analyses and ``mmcoa report`` into ``report/``.

Where the miniature departs from the paper, and why: ``docs/methods.md``, "The offline demo".
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from mmcoa.attacks import PGD, build_attack
from mmcoa.attacks.text.mlm import MINILM
from mmcoa.data import load_dataset
from mmcoa.eval import evaluate, format_table, write_records
from mmcoa.eval.suite import run_suite
from mmcoa.eval.suite_config import load_suite
from mmcoa.files import atomic_path, write_json_atomic, write_text_atomic
from mmcoa.models import load_model
from mmcoa.models.minilm import MINILM_CLIP, require_minilm_dir, write_minilm_clip_config
from mmcoa.profiles import CORRECTED, PUBLISHED
from mmcoa.train.config import TrainConfig
from mmcoa.train.trainer import train
from mmcoa.units import to_255
from mmcoa_demo.pretrain import PretrainConfig, pretrain_contrastive
from mmcoa_demo.summary import (
    SANITY_ROWS,
    ZERO_SHOT_ROW,
    demo_summary,
    read_sanity,
    sanity_path,
    table1_markdown,
)

DEMO_MODEL = MINILM_CLIP
DEMO_DATASET = "fashion_mnist"
DEMO_MLM = MINILM
CHECKPOINT_NAME = "minilm-clip-fashion-mnist.pt"
CONFIG_NAME = f"{MINILM_CLIP}.json"
SUMMARY_NAME = "summary.md"
# Table I under each profile (mmcoa.profiles): the corrected toolkit's, then the published code's.
TABLE1_PROFILES = (CORRECTED, PUBLISHED)
# The optimizer every Table I row shares: AdamW, or the published MMCoA code's Adam with coupled L2.
PROFILE_OPTIMIZER = {CORRECTED: "adamw", PUBLISHED: "adam"}
# The suite runner's keys of a record (mmcoa.eval.suite); table1.json names rows by row and method.
SUITE_KEYS = ("suite", "cell", "label", "attack_label", "cell_settings", "subset")
# LiT-style pre-training of the image tower against the locked MiniLM text tower (step 1).
PRETRAIN = PretrainConfig(lock_text=True, target_accuracy=0.80)

TABLE1_ROWS = ((ZERO_SHOT_ROW, None), ("FT-standard", "ft-standard"), ("TeCoA", "tecoa"), ("MMCoA", "mmcoa"))
REPORT_ROWS = (ZERO_SHOT_ROW, "TeCoA", "MMCoA")  # the models of the eps sweep
PAPER_EPS = 1 / 255  # the paper's evaluation budget (the attack table's)
EVAL_BATCH = 250
# One intra-op thread: the demo's tensors are small, and on a shared 2-core machine a second
# thread waiting for a busy core slows every step (docs/methods.md, "The offline demo").
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
    profiles: tuple[str, ...] = TABLE1_PROFILES  # a Table I per profile; the first is the report's

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
        profile: str = CORRECTED,
    ) -> TrainConfig:
        """``method``'s fine-tuning of the zero-shot ``checkpoint``: the schedule every method
        shares here, passed explicitly (not the method's own defaults), under ``profile``'s
        switches and optimizer (:data:`PROFILE_OPTIMIZER`)."""
        return TrainConfig(
            method=method,
            profile=profile,
            model=DEMO_MODEL,
            pretrained=str(checkpoint),
            dataset=DEMO_DATASET,
            data_root=data_root,
            shots=self.shots,
            epochs=1,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            optimizer=PROFILE_OPTIMIZER[profile],
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
        """Table I's columns: clean, image (PGD), text (BERT-Attack), multimodal (both,
        independently) and Co-Attack (BERT-Attack, then PGD guided by the attacked prompts)."""
        pgd = self.pgd_params()
        return [
            build_attack("clean"),
            PGD(**pgd),
            build_attack("bert", mlm=mlm),
            build_attack("multimodal", mlm=mlm, **pgd),
            build_attack("coattack", mlm=mlm, **pgd),
        ]

    def suite_attacks(self, mlm: str) -> list[dict]:
        """:meth:`attacks` as suite entries (eps and step size in units of 1/255)."""
        image = {**self.pgd_params(), "eps": to_255(self.eps), "step_size": to_255(self.eval_step_size)}
        return [
            {"name": "clean"},
            {"name": "pgd", **image},
            {"name": "bert", "mlm": mlm},
            {"name": "multimodal", "mlm": mlm, **image},
            {"name": "coattack", "mlm": mlm, **image},
        ]

    def describe(self, mlm: str, n_train_images: int | None = None, profile: str = CORRECTED) -> str:
        eps, step = f"{to_255(self.eps):g}/255", f"{to_255(self.eval_step_size):g}/255"
        images = f" ({n_train_images:,} images seen)" if n_train_images else ""
        optimizer = "AdamW" if profile == CORRECTED else "Adam with coupled L2"
        return (
            f"Robust accuracy (%) on {self.n_samples} Fashion-MNIST test images (a seeded "
            f"subset, the same for every row).\n"
            f"Image attack: L-inf PGD eps {eps}, step {step}, {self.eval_steps} steps, one "
            f"random start. Text attack: BERT-Attack on the class prompts (MLM {mlm}, k 10, "
            f"1 word). Multimodal attack: both, independently (the paper's). Co-Attack: "
            f"BERT-Attack, then {self.eval_steps} image steps against the attacked prompts "
            f"(paper Table V). Each attack is run against the row's own model.\n"
            f"Fine-tuning (each row from the zero-shot checkpoint): {self.max_steps} steps of "
            f"{self.batch_size} images{images}, {optimizer} lr {self.lr:g}, weight decay 0.2; "
            f"training PGD eps {eps}, step {eps}, {self.train_steps} steps; MMCoA alpha "
            f"{self.alpha:g}, beta {self.beta:g}, adversarial prompts every "
            f"{self.text_attack_every} step(s).\n"
            f"Profile: {profile} ({PROFILE_NOTES[profile]})."
        )


PROFILE_NOTES = {
    CORRECTED: "this toolkit's behaviour, docs/deviations.md",
    PUBLISHED: "every switch at the published code's behaviour: BERT-Attack candidates from the "
    "preceding token, arange targets over per-sample prompts, the training PGD's leaked gradients "
    "(MMCoA), FT-standard's cross-entropy on image features, robust = correct under attack",
}


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
    torch intra-op threads while it runs (None: torch's default). Table I under the second
    profile runs in a spawned process: a script calling this guards it with
    ``if __name__ == "__main__":``."""
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
            batch_size=EVAL_BATCH,
            seed=seed,
            device=device,
            progress=progress,
        )
        write_records(output / "results.json", records)
        _show(show_table, format_table(records), f"results written to {output / 'results.json'}\n")
        if table1 is not None:
            where = Where(data_root=data_root, device=device, seed=seed, progress=progress)
            by_profile = run_tables_and_report(output, checkpoint, mlm, table1, where, show_table)
            summary = demo_summary(records, by_profile, read_sanity(output))
            write_text_atomic(output / SUMMARY_NAME, summary)
    return records


def run_tables_and_report(
    output: Path, checkpoint: Path, mlm: str, settings: Table1Settings, where: Where, show_table: bool
) -> dict[str, list[dict]]:
    """Table I under each of ``settings.profiles`` and the report (on the first profile's
    models); returns each profile's records. The other profiles' tables run in their own
    process, one torch thread each, beside the first table and the report: the demo's one
    thread leaves the second core free, and each run is deterministic on its own."""
    first, *others = settings.profiles
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, len(others)), mp_context=context) as pool:
        quiet = replace(where, progress=False)
        pending = {p: pool.submit(_table1_alone, output, checkpoint, mlm, settings, quiet, p) for p in others}
        weights, records = run_table1(output, checkpoint, mlm, settings, where, first, show_table)
        page = write_demo_report(output, weights, mlm, settings, where)
        _show(
            show_table, f"report (tables, eps sweep, interpolation, gallery, sanity checks) written to {page}"
        )
        by_profile = {first: records}
        for profile, future in pending.items():
            by_profile[profile], table = future.result()
            _show(show_table, table)
    return by_profile


def _table1_alone(output, checkpoint, mlm, settings, where, profile) -> tuple[list[dict], str]:
    """:func:`run_table1` in a worker process with the demo's threads; its records and the
    table it would print."""
    with torch_threads(DEMO_THREADS):
        _, records = run_table1(output, checkpoint, mlm, settings, where, profile, show_table=False)
    return records, (output / f"{table1_name(profile)}.md").read_text()


def run_table1(
    output: Path,
    checkpoint: Path,
    mlm: str,
    settings: Table1Settings,
    where: Where,
    profile: str = CORRECTED,
    show_table: bool = True,
) -> tuple[dict[str, Path], list[dict]]:
    """Table I under ``profile``: the rows fine-tuned and evaluated, written to
    ``table1<suffix>.json`` and ``.md`` (suffix ``-published`` for the published profile);
    returns the weights by row and the records."""
    weights, n_train = fine_tune(output, checkpoint, mlm, settings, where, profile)
    records = evaluate_table1(output, weights, mlm, settings, where, profile)
    name = table1_name(profile)
    write_records(output / f"{name}.json", records)
    table = table1_markdown(records, settings.describe(mlm, n_train, profile), profile)
    write_text_atomic(output / f"{name}.md", table + "\n")
    _show(show_table, table, f"Table I written to {output / name}.md (records: {output / name}.json)")
    return weights, records


def table1_name(profile: str) -> str:
    """``table1`` (corrected profile) or ``table1-<profile>``: the stem of a Table I's files."""
    return "table1" if profile == CORRECTED else f"table1-{profile}"


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
    summary = pretrain_contrastive(model, train_set, replace(config, seed=seed), progress=progress)
    write_json_atomic(output / "pretrain.json", summary)
    write_minilm_clip_config(output / CONFIG_NAME)
    return save_checkpoint(model, output / CHECKPOINT_NAME)


def trained_weights(run: Path) -> Path:
    """The weights a finished ``mmcoa train`` run at ``run`` leaves for evaluation."""
    return run / "final.pt"


@dataclass(frozen=True)
class Where:
    """Where and how the demo's steps run: the data folder, the device, the seed (data order,
    attacks, subsets) and whether progress bars show."""

    data_root: str | None = None
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def fine_tune(
    output: Path,
    checkpoint: Path,
    mlm: str,
    settings: Table1Settings,
    where: Where = Where(),
    profile: str = CORRECTED,
) -> tuple[dict[str, Path], int | None]:
    """Each method of ``settings`` fine-tuned from ``checkpoint`` by the library's trainer under
    ``profile``, in a fresh ``OUTPUT/train/<method>`` (``train-<profile>/`` for another profile
    than corrected); returns the weights of each Table I row (the zero-shot checkpoint first)
    and the number of training images a method saw."""
    rows = {method: row for row, method in TABLE1_ROWS}
    weights, n_train = {ZERO_SHOT_ROW: checkpoint}, None
    folder = "train" if profile == CORRECTED else f"train-{profile}"
    for method in settings.methods:
        run = output / folder / method
        shutil.rmtree(run, ignore_errors=True)  # a fresh run, not rows appended to an old one
        config = settings.train_config(
            method,
            checkpoint=checkpoint,
            mlm=mlm,
            output=run,
            data_root=where.data_root,
            device=where.device,
            seed=where.seed,
            profile=profile,
        )
        n_train = train(config, progress=where.progress)["steps"] * settings.batch_size
        weights[rows.get(method, method)] = trained_weights(run)
    return weights, n_train


def table1_suite(
    weights: dict[str, Path],
    mlm: str,
    settings: Table1Settings,
    where: Where = Where(),
    profile: str = CORRECTED,
) -> dict:
    """Table I as a suite (``mmcoa suite``'s YAML, ``docs/reproduce.md``): one row per model of
    ``weights``, Fashion-MNIST, the attacks of :meth:`Table1Settings.suite_attacks`, under
    ``profile``."""
    return {
        "name": f"demo-{table1_name(profile)}",
        "description": f"The offline demo's miniature Table I, {profile} profile (written by mmcoa demo)",
        "task": "classification",
        "profile": profile,
        "split": "test",
        "n_samples": settings.n_samples,
        "seed": where.seed,
        "batch_size": EVAL_BATCH,
        "device": where.device,
        "data_root": where.data_root,
        "models": [
            {"label": row, "name": DEMO_MODEL, "checkpoint": _literal(str(path))}
            for row, path in weights.items()
        ],
        "datasets": [DEMO_DATASET],
        "attacks": settings.suite_attacks(mlm),
    }


def evaluate_table1(
    output: Path,
    weights: dict[str, Path],
    mlm: str,
    settings: Table1Settings,
    where: Where = Where(),
    profile: str = CORRECTED,
) -> list[dict]:
    """Write Table I's suite file ``OUTPUT/table1.yaml`` (``table1-<profile>.yaml``) and run it
    with the suite runner in a fresh ``OUTPUT/table1-suite`` (``table1-<profile>-suite``);
    returns its records as ``table1.json`` holds them: the evaluation records with their
    ``row`` and ``method`` (``None`` for the zero-shot model)."""
    suite = table1_suite(weights, mlm, settings, where, profile)
    suite_file = output / f"{table1_name(profile)}.yaml"
    write_text_atomic(suite_file, yaml.safe_dump(suite, sort_keys=False, allow_unicode=True))
    folder = output / f"{table1_name(profile)}-suite"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh suite, not cells of an earlier run
    records = run_suite(load_suite(suite_file), folder, progress=where.progress)
    methods = {row: method for row, method in TABLE1_ROWS}
    return [
        {
            **{k: v for k, v in r.items() if k not in SUITE_KEYS},
            "row": r["label"],
            "method": methods.get(r["label"], r["label"]),
        }
        for r in records
    ]


def write_demo_report(
    output: Path,
    weights: dict[str, Path],
    mlm: str,
    settings: Table1Settings,
    where: Where = Where(),
) -> Path:
    """The eps sweep (paper Fig. 6: zero-shot, TeCoA and MMCoA under the image and multimodal
    attacks at each of ``sweep_eps``), the weight interpolation from the zero-shot model to
    MMCoA (Fig. 8), a gallery of attacks on the zero-shot model and the sanity checks of the
    zero-shot model and MMCoA into ``OUTPUT/analyses``, then ``mmcoa report`` over Table I and
    them into ``OUTPUT/report``; returns the report's HTML path. ``weights``: by Table I row."""
    from mmcoa.analysis import (
        eps_sweep,
        gallery,
        interpolation,
        plot_eps_sweep,
        plot_gallery,
        plot_interpolation,
    )
    from mmcoa.report import write_report

    test_set = load_dataset(DEMO_DATASET, split="test", root=where.data_root)
    models = {
        row: load_model(DEMO_MODEL, pretrained=str(weights[row]), device=where.device)
        for row in REPORT_ROWS
        if row in weights
    }
    steps = {"step_size": settings.eval_step_size, "n_steps": settings.eval_steps}
    common = {
        "n_samples": settings.report_samples,
        "batch_size": EVAL_BATCH,
        "seed": where.seed,
        "progress": where.progress,
    }
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
        seed=where.seed,
    )
    plot_gallery(examples, analyses)
    if settings.sanity is not None:
        write_sanity_checks(models, test_set, settings, analyses, seed=where.seed)
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
                batch_size=EVAL_BATCH,
                seed=seed,
                output_dir=sanity_path(analyses.parent, row).parent,
            )
    return summaries


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


def _literal(path: str) -> str:
    """``path`` as a suite checkpoint, where braces would be a ``{dataset}`` placeholder."""
    return path.replace("{", "{{").replace("}", "}}")


def _show(enabled: bool, *lines: str) -> None:
    if enabled:
        print(*lines, sep="\n")
