"""``mmcoa analyze <kind> ...``: one argument parser and one runner per analysis.

Every kind writes a PNG and a JSON of the numbers behind it into ``OUTPUT``: ``eps_sweep``,
``curves``, ``interpolation``, ``features``, ``time_cost``, ``gallery``, ``sanity``
(``.png``/``.json``; ``sanity`` also ``.md``). Those that evaluate models also write their
records (``eps_sweep_records.json``, ``curves_records.json``, ``interpolation_records.json``,
``sanity_records.json``), so ``mmcoa report OUTPUT`` shows both the plots and the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmcoa.attacks.flags import add_attack_flags, attack_params_from_flags
from mmcoa.devices import AUTO, check_device
from mmcoa.errors import MmcoaError
from mmcoa.flags import OneLineParser, refuse_renamed
from mmcoa.models.defense_flags import add_defense_flags, defense_from_flags
from mmcoa.models.test_time import defend
from mmcoa.outputs import check_output
from mmcoa.registry import Registry
from mmcoa.units import check_255


@dataclass(frozen=True)
class Analysis:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Path]


ANALYSES: Registry[Analysis] = Registry("analysis")


def run_command(kind: str, argv: list[str]) -> int:
    """Parse ``argv`` for analysis ``kind`` and run it; an unknown kind is a one-line error."""
    analysis = ANALYSES.get(kind)
    parser = OneLineParser(prog=f"mmcoa analyze {kind}", description=analysis.help)
    analysis.configure(parser)
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if getattr(args, "device", None) is not None:
        args.device = check_device(args.device)  # auto: cuda when available
    check_output(args.output, directory=True)
    summary = analysis.run(args)
    print(f"{kind}: figure {summary.with_suffix('.png')}, numbers {summary}")
    return 0


def describe_analyses() -> str:
    return "; ".join(f"{name}: {ANALYSES.get(name).help}" for name in ANALYSES.names())


# -- shared flags --------------------------------------------------------------------------------
def _model_flags(p: argparse.ArgumentParser, several: bool = True) -> None:
    p.add_argument("--model", required=True, help="tiny-clip, ViT-B-32, hf-hub:..., hf:...")
    if several:
        p.add_argument(
            "--pretrained",
            action="append",
            default=None,
            help="weights (tag, checkpoint path or 'random'); repeat to compare models",
        )
        p.add_argument(
            "--label",
            action="append",
            default=None,
            help="display name of each --pretrained, in the same order",
        )
    else:
        p.add_argument("--pretrained", default=None)
    _data_flags(p)


def _data_flags(p: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    p.add_argument("--dataset", required=dataset_required)
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default=AUTO, help="cpu, cuda, cuda:N or auto: cuda when available (default: auto)"
    )
    p.add_argument("--template", default=None)


def _attack_flags(p: argparse.ArgumentParser, eps_list: bool = False) -> None:
    """The flags of ``mmcoa eval`` that set attack parameters (one declaration:
    :mod:`mmcoa.attacks.flags`)."""
    add_attack_flags(p, eps_list=eps_list)


def _attack_params(args: argparse.Namespace, names: list[str]) -> dict:
    """Attack parameters (pixel units) from the flags, as ``mmcoa eval`` reads them; a flag
    none of the ``names`` attacks takes is an error, before any model is loaded."""
    from mmcoa.attacks.settings import build_attacks

    if isinstance(args.eps, str):
        args.eps = _floats(args.eps, "--eps")[0]
    params = attack_params_from_flags(args)
    build_attacks(names, params)
    return params


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MmcoaError(f"{flag} takes comma-separated numbers; got {text!r}") from None
    if not values:
        raise MmcoaError(f"{flag} takes comma-separated numbers; got {text!r}")
    return values


def _budgets(text: str, flag: str) -> list[float]:
    """Comma-separated eps values in units of 1/255, each checked (a pixel value is refused)."""
    return [check_255(value, flag) for value in _floats(text, flag)]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _models(args: argparse.Namespace) -> dict:
    """``{label: model}`` from --model, --pretrained (repeatable) and --label."""
    from mmcoa.models import load_model, validate_model_name
    from mmcoa.report.columns import row_labels

    args.device = check_device(args.device)
    validate_model_name(args.model)
    weights = args.pretrained or [None]
    labels = args.label or row_labels([{"model": args.model, "pretrained": w} for w in weights])
    if len(labels) != len(weights) or len(set(labels)) != len(labels):
        raise MmcoaError(
            f"give one distinct --label per --pretrained; got {len(labels)} labels for {len(weights)} weights"
        )
    return {
        label: load_model(args.model, pretrained=w, device=args.device) for label, w in zip(labels, weights)
    }


def _dataset(args: argparse.Namespace):
    from mmcoa.data import load_dataset

    return load_dataset(args.dataset, split=args.split, root=args.data_root)


def _write_records(args: argparse.Namespace, kind: str, records: list[dict]) -> None:
    from mmcoa.eval import write_records

    write_records(Path(args.output) / f"{kind}_records.json", records)


# -- eps sweep (Fig. 6) --------------------------------------------------------------------------
def _configure_eps_sweep(p):
    _model_flags(p)
    _attack_flags(p, eps_list=True)
    p.add_argument("--attacks", default="pgd,multimodal", help="attacks to sweep (clean is added)")


def _run_eps_sweep(args) -> Path:
    from mmcoa.analysis.eps_sweep import SWEEP_EPS, eps_sweep, plot_eps_sweep

    budgets = _budgets(args.eps, "--eps") if args.eps else list(SWEEP_EPS)
    args.eps, attacks = None, _names(args.attacks)
    params = _attack_params(args, attacks)
    dataset, models = _dataset(args), _models(args)
    records = eps_sweep(
        models,
        dataset,
        eps=budgets,
        attacks=attacks,
        attack_params=params,
        **_evaluation(args),
    )
    _write_records(args, "eps_sweep", records)
    return plot_eps_sweep(records, args.output)


# -- training curves (Fig. 7) --------------------------------------------------------------------
def _configure_curves(p):
    p.add_argument("runs", nargs="+", help="training run directories (mmcoa train --output)")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        metavar="EPOCH=PATH",
        help="extra checkpoint of the (single) run at that epoch; repeatable",
    )
    p.add_argument("--attacks", default="clean,pgd")
    p.add_argument("--no-eval", action="store_true", help="loss curves only")
    _data_flags(p, dataset_required=False)
    _attack_flags(p)


def _run_curves(args) -> Path:
    from mmcoa.analysis.curves import plot_curves, training_curves

    attacks = _names(args.attacks)
    curves = training_curves(
        args.runs,
        checkpoints=_epoch_paths(args.checkpoint or []),
        dataset=args.dataset,
        split=args.split,
        attacks=attacks,
        attack_params=_attack_params(args, attacks),
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        evaluate_checkpoints=not args.no_eval,
        progress=not args.no_progress,
    )
    if curves["records"]:
        _write_records(args, "curves", curves["records"])
    return plot_curves(curves, args.output)


def _epoch_paths(items: list[str]) -> dict[float, str]:
    out = {}
    for item in items:
        epoch, sep, path = item.partition("=")
        if not sep or not path:
            raise MmcoaError(f"--checkpoint takes EPOCH=PATH; got {item!r}")
        out[_floats(epoch, "--checkpoint EPOCH")[0]] = path
    return out


# -- weight interpolation (Fig. 8) ---------------------------------------------------------------
def _configure_interpolation(p):
    p.add_argument("--model", required=True)
    p.add_argument("--zero-shot", default=None, help="weights of lambda 0 (tag, path, random)")
    p.add_argument("--tuned", required=True, help="weights of lambda 1 (checkpoint path)")
    p.add_argument("--lambdas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--attacks", default="clean,pgd", help="must include clean")
    _data_flags(p)
    _attack_flags(p)


def _run_interpolation(args) -> Path:
    from mmcoa.analysis.interpolation import interpolation, plot_interpolation
    from mmcoa.models import load_model

    attacks = _names(args.attacks)
    params = _attack_params(args, attacks)
    args.pretrained, args.label = [args.zero_shot], ["zero-shot"]
    dataset, (start,) = _dataset(args), _models(args).values()
    tuned = load_model(args.model, pretrained=args.tuned, device=args.device)
    records = interpolation(
        start,
        tuned,
        dataset,
        lambdas=_floats(args.lambdas, "--lambdas"),
        attacks=attacks,
        attack_params=params,
        **_evaluation(args),
    )
    _write_records(args, "interpolation", records)
    return plot_interpolation(records, args.output)


# -- features: t-SNE and cosine similarity (Fig. 9) ----------------------------------------------
def _configure_features(p):
    _model_flags(p)
    _attack_flags(p)
    p.add_argument("--attack", default="pgd")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--iterations", type=int, default=1000, help="t-SNE gradient steps")


def _run_features(args) -> Path:
    from mmcoa.analysis.features import feature_analysis, plot_features

    params = _attack_params(args, [args.attack])
    dataset, models = _dataset(args), _models(args)
    result = feature_analysis(
        models,
        dataset,
        args.attack,
        attack_params=params,
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        perplexity=args.perplexity,
        n_iter=args.iterations,
    )
    return plot_features(result, args.output, attack_name=args.attack)


# -- time cost (Table VIII) ----------------------------------------------------------------------
def _configure_time(p):
    p.add_argument(
        "paths",
        nargs="+",
        help="training run directories and/or result files or directories (searched recursively)",
    )


def _run_time(args) -> Path:
    from mmcoa.analysis.runs import find_runs, read_runs
    from mmcoa.analysis.timecost import plot_time_cost, time_cost
    from mmcoa.report.records import load_results

    for path in args.paths:
        if not os.path.exists(path):
            raise MmcoaError(
                f"{path!r} does not exist; pass training run directories and/or result files or directories"
            )
    runs = read_runs(find_runs(args.paths))
    records = load_results(args.paths, required=False).records
    return plot_time_cost(time_cost(runs, records), args.output)


# -- gallery -------------------------------------------------------------------------------------
def _configure_gallery(p):
    _model_flags(p, several=False)
    _attack_flags(p)
    p.add_argument("--attacks", default="pgd,bert,multimodal")
    p.add_argument("--per-attack", type=int, default=3)
    p.add_argument("--pool", type=int, default=32, help="samples to pick examples from")


def _run_gallery(args) -> Path:
    from mmcoa.analysis.gallery import gallery, plot_gallery

    attacks = _names(args.attacks)
    params = _attack_params(args, attacks)
    args.pretrained, args.label = [args.pretrained], None
    dataset, (model,) = _dataset(args), _models(args).values()
    examples = gallery(
        model,
        dataset,
        attacks,
        attack_params=params,
        per_attack=args.per_attack,
        pool=args.pool,
        seed=args.seed,
        template=args.template,
    )
    return plot_gallery(examples, args.output)


# -- sanity: gradient-masking checks (Carlini et al. 2019) --------------------------------------
def _configure_sanity(p):
    _model_flags(p, several=False)
    add_defense_flags(p)
    p.add_argument(
        "--eps",
        default="1,2,4,8,16",
        help="PGD budgets of the monotonicity sweep, comma-separated, units of 1/255",
    )
    p.add_argument(
        "--n-steps", default="10,50,100", help="PGD iterations of the steps check, comma-separated"
    )
    refuse_renamed(p, {"steps": "n_steps"})
    p.add_argument(
        "--check-eps",
        type=float,
        default=1,
        help="eps of the steps, Square and noise checks, units of 1/255 (default 1, the paper's)",
    )
    p.add_argument(
        "--large-eps",
        type=float,
        default=64,
        help="eps whose accuracy must be at most chance, units of 1/255",
    )
    p.add_argument("--square-queries", type=int, default=5000, help="Square queries (AutoAttack: 5000)")
    p.add_argument("--step-size", type=float, default=1, help="PGD step, units of 1/255")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="accuracy fraction a comparison forgives (at least one sample); default 0.01",
    )
    p.add_argument(
        "--noise-fraction",
        type=float,
        default=0.5,
        help="noise may remove at most this share of PGD's accuracy drop",
    )


def _run_sanity(args) -> Path:
    from mmcoa.analysis.sanity import SanityPlan, check_tolerances, run_sanity

    for name in ("check_eps", "large_eps", "step_size"):
        check_255(getattr(args, name), f"--{name.replace('_', '-')}")
    plan = SanityPlan(
        eps=tuple(_budgets(args.eps, "--eps")),
        steps=tuple(_ints(args.n_steps, "--n-steps")),
        check_eps=args.check_eps,
        large_eps=args.large_eps,
        square_queries=args.square_queries,
        step_size=args.step_size,
    )
    check_tolerances(args.tolerance, args.noise_fraction)
    defense = defense_from_flags(args, seed=args.seed)
    args.pretrained, args.label = [args.pretrained], None
    dataset, (model,) = _dataset(args), _models(args).values()
    model = model if defense is None else defend(model, defense)
    summary = run_sanity(
        model,
        dataset,
        **dataclasses.asdict(plan),
        tolerance=args.tolerance,
        noise_fraction=args.noise_fraction,
        output_dir=args.output,
        **_evaluation(args),
    )
    for check in summary["checks"]:
        print(f"{check['result']}  {check['name']:<15} {check['numbers']}")
    print(f"table {summary['files']['table']}")
    return Path(summary["files"]["json"])


def _evaluation(args) -> dict:
    """The evaluation settings every analysis passes on (samples, batch, seed, template,
    progress bar)."""
    return dict(
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        template=args.template,
        progress=not args.no_progress,
    )


def _ints(text: str, flag: str) -> list:
    """Comma-separated numbers, whole ones as ints (others stay floats for the check to name)."""
    return [int(v) if v.is_integer() else v for v in _floats(text, flag)]


for _name, _analysis in {
    "eps-sweep": Analysis(
        "robust accuracy at eps 1, 2, 4/255 (paper Fig. 6)", _configure_eps_sweep, _run_eps_sweep
    ),
    "curves": Analysis(
        "loss and accuracy against epochs from a run (paper Fig. 7)", _configure_curves, _run_curves
    ),
    "interpolation": Analysis(
        "zero-shot/fine-tuned weight interpolation (paper Fig. 8)",
        _configure_interpolation,
        _run_interpolation,
    ),
    "features": Analysis(
        "t-SNE and clean/adversarial cosine similarity (paper Fig. 9)", _configure_features, _run_features
    ),
    "time": Analysis(
        "training time per epoch and evaluation time (paper Table VIII)", _configure_time, _run_time
    ),
    "gallery": Analysis(
        "clean/adversarial images, perturbation, prompts, predictions", _configure_gallery, _run_gallery
    ),
    "sanity": Analysis(
        "gradient-masking checks: monotone in eps and steps, large eps, Square, noise (Carlini et al. 2019)",
        _configure_sanity,
        _run_sanity,
    ),
}.items():
    ANALYSES.register(_name)(_analysis)
