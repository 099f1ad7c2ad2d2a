"""mmcoa: attack, robustify and evaluate CLIP-style vision-language models.

Command line wiring: parse, build from the registries, call.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmcoa.attacks import ATTACKS, RETRIEVAL_ATTACKS
from mmcoa.attacks.flags import add_attack_flags, attack_params_from_flags
from mmcoa.devices import AUTO
from mmcoa.distributed import fail_fast, running_under_torchrun
from mmcoa.errors import MmcoaError, one_line
from mmcoa.eval.metrics import Scoring
from mmcoa.flags import (
    OneLineParser,
    add_field_flags,
    field_values,
    flag_name,
    refuse_renamed,
    switch_default_text,
)
from mmcoa.models.defense_flags import add_defense_flags, defense_from_flags
from mmcoa.outputs import check_output
from mmcoa.plugins import load_plugins
from mmcoa.precision import PRECISIONS
from mmcoa.profiles import CORRECTED, PROFILES, PUBLISHED, profile_settings


def main(argv: list[str] | None = None) -> int:
    """Run one command: a user's mistake is one ``mmcoa: error:`` line and exit status 2;
    Ctrl-C is one line saying what was saved (the command's ``saved`` hint) and status 130.
    The plugins of ``$MMCOA_PLUGINS`` (:mod:`mmcoa.plugins`) are imported first."""
    try:
        load_plugins()
    except MmcoaError as error:
        print(f"mmcoa: error: {one_line(error)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except MmcoaError as error:
        if running_under_torchrun():  # end every rank now, not at the process-group timeout
            fail_fast(one_line(error))
        print(f"mmcoa: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmcoa: interrupted; {args.saved(args)}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmcoa", description=__doc__.splitlines()[0])
    parser.set_defaults(saved=nothing_saved)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_eval(commands)
    _add_train(commands)
    _add_retrieval(commands)
    _add_suite(commands)
    _add_demo(commands)
    _add_report(commands)
    _add_reproduce(commands)
    _add_leaderboard(commands)
    _add_analyze(commands)
    listing = commands.add_parser("models", help="list the model names")
    listing.add_argument("--all", action="store_true", help="include every open_clip architecture")
    listing.set_defaults(handler=cmd_models)
    listing = commands.add_parser("datasets", help="list the datasets and whether they are on disk")
    listing.add_argument("--data-root", default=None)
    listing.set_defaults(handler=cmd_datasets)
    commands.add_parser("attacks", help="list the attacks, their threats and defaults").set_defaults(
        handler=cmd_attacks
    )
    _add_zoo(commands)  # last: also gives every command that takes --model a --zoo FILE flag
    return parser


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="zero-shot accuracy under attacks → JSON records")
    p.add_argument("--model", required=True, help="tiny-clip, ViT-B-32, hf-hub:..., hf:...")
    p.add_argument("--pretrained", default=None, help="tag, checkpoint path, or 'random'")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument(
        "--attacks", default="clean,pgd", help=f"comma-separated, of: {', '.join(ATTACKS.names())}"
    )
    add_attack_flags(p, skip=("precision",))  # --precision: add_runtime_flags
    add_profile_flags(p, Scoring)
    add_defense_flags(p)
    p.add_argument(
        "--template",
        default=None,
        help="prompt template with {} (default: the dataset's), or 'ensemble': the dataset's prompt "
        "ensemble (wds: datasets ship one)",
    )
    p.add_argument(
        "--logit-scale",
        type=float,
        default=None,
        help="a fixed logit scale (default: the model's; RobustVLM: 100)",
    )
    p.add_argument("--prompt", default=None, help="a vp/advpt run's prompt.pt to put on the model")
    p.add_argument(
        "--resize",
        default="torch",
        choices=("torch", "pil"),
        help="bicubic resize to the model's input: 'torch' (published code: unclamped) "
        "or 'pil' (open_clip/clip_benchmark's PIL transform, clamped)",
    )
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable images out and count them in the record (default: stop)",
    )
    add_workers_flag(p)
    add_runtime_flags(p)
    p.add_argument("--output", required=True, help="result JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_eval, saved=file_saved)


def add_profile_flags(p: argparse.ArgumentParser, *switch_classes) -> None:
    """``--profile`` and the flags of the switches of ``switch_classes`` (their default: the
    profile's value; the attacks' switches come with the attack flags)."""
    p.add_argument(
        "--profile",
        default=CORRECTED,
        choices=PROFILES,
        help="behaviour switches: corrected, or published (the published code's, docs/deviations.md); "
        "a switch given explicitly wins (default: corrected)",
    )
    for cls in switch_classes:
        add_field_flags(p, cls, lambda f: switch_default_text(f, str(f.metadata["corrected"])))


def add_workers_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loading processes (0: in the main process; default: min(8, CPUs per "
        "process on this node), 0 for datasets held in memory)",
    )


def add_device_flag(p: argparse.ArgumentParser, default: str | None = AUTO) -> None:
    shown = default or "the suite file's, else auto"
    p.add_argument(
        "--device", default=default, help=f"cpu, cuda, cuda:N or auto: cuda when available (default: {shown})"
    )


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """--precision (every image-side attack), --tf32/--no-tf32 and --compile."""
    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="image attacks' precision: bf16 autocasts the model (default fp32)",
    )
    p.add_argument(
        "--tf32",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="TF32 matmuls on CUDA (default: on for CUDA, as open_clip)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the encoders (the compile time is in each record's runtime field)",
    )


def runtime_settings(args: argparse.Namespace) -> dict:
    return {"tf32": args.tf32, "compile": args.compile}


def _add_train(commands) -> None:
    from mmcoa.train.config import RENAMED, TrainConfig, default_text

    p = commands.add_parser(
        "train",
        help="adversarial fine-tuning → run directory",
        description="Every setting of a YAML file is also a flag (flags override "
        "the file); eps and step sizes in units of 1/255, as in the YAML files.",
    )
    p.add_argument("--config", default=None, help="YAML file of settings (flags override it)")
    add_field_flags(p, TrainConfig, default_text)  # one flag per TrainConfig field
    refuse_renamed(p, RENAMED)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_train, saved=train_saved)


def cmd_train(args: argparse.Namespace) -> int:
    from mmcoa.train.config import TrainConfig, load_config
    from mmcoa.train.trainer import train

    config = load_config(args.config, field_values(args, TrainConfig), spell=flag_name)
    check_output(config.output, directory=True, flag="--output" if args.output is not None else "output")
    args.output = config.output  # where an interruption's hint looks for the checkpoint
    metrics = train(config, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2))
    print(f"run written to {config.output} (final weights: {Path(config.output) / 'final.pt'})")
    return 0


def _add_retrieval(commands) -> None:
    p = commands.add_parser("retrieval", help="MSCOCO (Karpathy 5k test) retrieval R@1/5/10")
    p.add_argument("--model", required=True)
    p.add_argument("--pretrained", default=None)
    p.add_argument("--data-root", required=True, help="folder with dataset_coco.json and the images")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--attacks", default="clean", help=f"comma-separated, of: {', '.join(RETRIEVAL_ATTACKS.names())}"
    )
    p.add_argument("--mlm", default=None)
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=0)
    add_workers_flag(p)
    add_runtime_flags(p)
    p.add_argument("--output", required=True, help="result JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_retrieval, saved=file_saved)


def _precision_for(attack_class, precision: str | None) -> dict | None:
    """``{"precision": ...}`` for an attack that takes it (image attacks), else nothing."""
    from mmcoa.attacks.base import parameter_names

    return {"precision": precision} if precision and "precision" in parameter_names(attack_class) else None


def cmd_retrieval(args: argparse.Namespace) -> int:
    from mmcoa.data import load_coco_karpathy
    from mmcoa.devices import check_device
    from mmcoa.eval import evaluate_retrieval
    from mmcoa.files import write_json_atomic
    from mmcoa.models import load_model
    from mmcoa.models.runtime import configure_runtime

    names = attack_names(args.attacks)
    for name in names:
        RETRIEVAL_ATTACKS.get(name)
    if args.precision and not any(_precision_for(RETRIEVAL_ATTACKS.get(n), args.precision) for n in names):
        takers = [
            n for n in RETRIEVAL_ATTACKS.names() if _precision_for(RETRIEVAL_ATTACKS.get(n), args.precision)
        ]
        raise MmcoaError(
            f"--precision applies to image attacks ({', '.join(takers)}); chosen: {args.attacks}"
        )
    args.device = check_device(args.device)
    check_output(args.output, directory=False)
    model = load_model(args.model, pretrained=args.pretrained, device=args.device)
    configure_runtime(model, **runtime_settings(args))
    dataset = load_coco_karpathy(args.data_root, split=args.split, image_size=model.image_size[0])
    records = [
        evaluate_retrieval(
            model,
            dataset,
            name,
            mlm=args.mlm,
            n_images=args.n_images,
            attack_params=_precision_for(RETRIEVAL_ATTACKS.get(name), args.precision),
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            progress=not args.no_progress,
        )
        for name in names
    ]
    write_json_atomic(args.output, records)
    for r in records:
        print(
            f"{r['attack']:<9} i2t R@1/5/10 {r['i2t_r1']:.4f} {r['i2t_r5']:.4f} {r['i2t_r10']:.4f}"
            f"   t2i R@1/5/10 {r['t2i_r1']:.4f} {r['t2i_r5']:.4f} {r['t2i_r10']:.4f}"
        )
    print(f"results written to {args.output}")
    return 0


def _add_suite(commands) -> None:
    p = commands.add_parser(
        "suite",
        help="a paper table: models × datasets × attacks, one record "
        "per cell, resumable (configs/paper/*.yaml)",
    )
    p.add_argument("config", help="suite YAML file, e.g. configs/paper/table1.yaml")
    p.add_argument("--output", required=True, help="results folder (cells/, subsets/, records.json)")
    p.add_argument(
        "--resume", action="store_true", help="skip cells whose record exists with the same settings"
    )
    p.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help="a fixed seeded subset of N samples (retrieval: images) per dataset",
    )
    add_device_flag(p, default=None)  # the suite file's device (default there: auto)
    p.add_argument("--data-root", default=None, help="overrides the suite's data_root")
    add_workers_flag(p)
    p.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="evaluate only shard I of N, to split the suite across N machines: the table's "
        "(model row, dataset) groups are dealt out in turn, group g (from 0, in table order) to "
        "shard g mod N + 1, so a group's cells share one pass (with fewer groups than N, cells "
        "are dealt one by one); I counts from 1 to N (1/4 is the first of 4). The shards may write into one shared --output folder "
        "(records.json then lists every finished cell there) or each into its own, combined "
        "with mmcoa suite-merge; --resume works per shard",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_suite, saved=suite_saved)
    _add_suite_merge(commands)


def cmd_suite(args: argparse.Namespace) -> int:
    from mmcoa.eval.suite import format_cells, parse_shard, run_suite, shard_cells
    from mmcoa.data.loading import check_workers
    from mmcoa.eval.suite_config import load_suite

    shard = parse_shard(args.shard) if args.shard is not None else None  # one line, before work
    config = load_suite(args.config, n_samples=args.n_samples, device=args.device, data_root=args.data_root)
    if args.workers is not None:
        config.workers = check_workers(args.workers)  # a bad value: one line, now
    check_output(args.output, directory=True)
    records = run_suite(config, args.output, resume=args.resume, progress=not args.no_progress, shard=shard)
    print(format_cells(records))
    records_file = Path(args.output) / "records.json"
    cells = config.cells()
    if shard is None:
        print(f"{len(records)} of {len(cells)} cells done; records in {records_file}")
        return 0
    mine = {cell.id for cell in shard_cells(cells, shard)}
    done = sum(r["cell"] in mine for r in records)
    print(
        f"shard {shard[0]}/{shard[1]}: {done} of its {len(mine)} cells done; {len(records)} of "
        f"{len(cells)} cells of the suite in {args.output} (records in {records_file})"
    )
    return 0


def _add_suite_merge(commands) -> None:
    p = commands.add_parser(
        "suite-merge",
        help="combine the folders of a suite's shards (mmcoa suite --shard I/N), run on "
        "different machines, into one folder",
    )
    p.add_argument(
        "parts",
        nargs="+",
        metavar="PART",
        help="folders written by mmcoa suite (--shard or not) for the same suite settings",
    )
    p.add_argument(
        "--output",
        required=True,
        help="the merged folder: new, empty, or an earlier merge of the same suite (its cells are kept)",
    )
    p.set_defaults(handler=cmd_suite_merge, saved=folder_saved)


def cmd_suite_merge(args: argparse.Namespace) -> int:
    """Check every part, then write the merged suite.json, subsets, cells and records.json; the
    cells no part holds are listed with the shard that owns them."""
    from mmcoa.eval.suite import format_cells, format_missing, merge_suite

    check_output(args.output, directory=True)
    merged = merge_suite(args.parts, args.output)
    print(format_cells(merged.records))
    if merged.ignored:
        print(
            f"left out {len(merged.ignored)} cell file(s) of other settings or unreadable, "
            f"e.g. {merged.ignored[0]}"
        )
    if merged.missing:
        print(format_missing(merged))
    print(
        f"{len(merged.records)} of {merged.n_cells} cells merged into {args.output}"
        + (f" (records in {Path(args.output) / 'records.json'})" if merged.records else "")
    )
    return 0


def _add_demo(commands) -> None:
    p = commands.add_parser(
        "demo",
        help="offline demo: a CLIP with a pretrained MiniLM text tower on "
        "Fashion-MNIST, attacks, miniature Table I",
    )
    p.add_argument("--output", default="runs/demo")
    p.add_argument(
        "--mlm",
        default="minilm",
        help="BERT-Attack's candidate source: minilm (the "
        "text tower's pretrained encoder, tied head) or a masked-LM directory or hub id",
    )
    p.add_argument("--data-root", default=None)
    add_device_flag(p, default="cpu")  # the demo's numbers are CPU runs
    p.add_argument("--n-samples", type=int, default=500, help="test images of the attack table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_demo, saved=folder_saved)


def _add_report(commands) -> None:
    p = commands.add_parser(
        "report", help="paper-style tables and plots from result files → report.md, report.html, CSVs"
    )
    p.add_argument("results", nargs="+", help="record files or directories (searched recursively)")
    p.add_argument("--output", required=True, help="report directory")
    p.add_argument("--zero-shot-label", default="CLIP", help="row the gain rows subtract first")
    p.add_argument("--tecoa-label", default="TeCoA", help="row the second gain rows subtract")
    p.add_argument("--title", default="mmcoa report")
    p.set_defaults(handler=cmd_report, saved=folder_saved)


def cmd_report(args: argparse.Namespace) -> int:
    from mmcoa.report import write_report

    check_output(args.output, directory=True)
    page = write_report(
        args.results, args.output, zero_shot=args.zero_shot_label, tecoa=args.tecoa_label, title=args.title
    )
    print(f"report written to {page} (also report.md, tables/*.csv, records.csv)")
    return 0


def _add_reproduce(commands) -> None:
    from mmcoa.eval.protocols import protocol_names

    p = commands.add_parser(
        "reproduce",
        help="a published protocol on one model → records and our number beside the published one",
        description="Runs PROTOCOL (a shipped name or a protocol YAML file) on --model and writes "
        "each part's suite folder, comparison.md/.html/.csv/.json (ours, published, difference, "
        "flag beyond sampling error) under --output. Protocols: docs/reproduce.md.",
    )
    p.add_argument("protocol", help=f"{', '.join(protocol_names())}, or a protocol YAML file")
    p.add_argument("--model", required=True, help="a zoo name (mmcoa zoo) or any model name")
    p.add_argument(
        "--pretrained",
        default=None,
        help="weights file for the model (a zoo entry's file, or a checkpoint; {dataset} in the "
        "path for one checkpoint per dataset)",
    )
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--resume", action="store_true", help="skip finished cells (as mmcoa suite --resume)")
    add_device_flag(p, default=None)
    p.add_argument("--data-root", default=None, help="the datasets' folder (wds_<name>/ folders for wds:)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="the attacks' precision (default: the protocol's, fp32 as published; bf16 is faster "
        "and recorded in each record)",
    )
    add_workers_flag(p)
    p.add_argument(
        "--shard", metavar="I/N", default=None, help="run only shard I of N (see mmcoa suite --help)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_reproduce, saved=folder_saved)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mmcoa.data.loading import check_workers
    from mmcoa.eval.protocols import get_protocol
    from mmcoa.eval.suite import format_cells, parse_shard, run_suite
    from mmcoa.report.published import write_comparison

    shard = parse_shard(args.shard) if args.shard is not None else None
    protocol = get_protocol(args.protocol)
    runtime = dict(device=args.device, data_root=args.data_root, precision=args.precision)
    if args.workers is not None:
        runtime["workers"] = check_workers(args.workers)
    configs = {
        part: protocol.suite(part, args.model, args.pretrained, **runtime) for part in protocol.parts()
    }
    check_output(args.output, directory=True)
    output = Path(args.output)
    records = []
    for part, config in configs.items():
        done = run_suite(
            config, output / part, resume=args.resume, progress=not args.no_progress, shard=shard
        )
        print(format_cells(done))
        records += done
    expected = sum(len(c.cells()) for c in configs.values())
    if len(records) < expected:
        print(
            f"{len(records)} of {expected} cells done under {output}; merge the shards, then rerun with --resume"
        )
        return 0
    page, rows = write_comparison(records, protocol, args.model, output)
    flagged = [r for r in rows if r.flagged]
    print(f"{len(rows)} published numbers compared, {len(flagged)} beyond sampling error; {page}")
    return 0


def _add_leaderboard(commands) -> None:
    p = commands.add_parser(
        "leaderboard",
        help="records of many models under one protocol → a RobustBench-style table (md, csv, html)",
    )
    p.add_argument("results", nargs="+", help="mmcoa reproduce folders, suite folders or record files")
    p.add_argument("--output", required=True, help="folder for leaderboard.md, .html and .csv")
    p.set_defaults(handler=cmd_leaderboard, saved=folder_saved)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from mmcoa.eval.protocols import protocol_of
    from mmcoa.report.published import write_leaderboard
    from mmcoa.report.records import load_records

    records = load_records(args.results)
    protocol = protocol_of(records)
    check_output(args.output, directory=True)
    page = write_leaderboard(records, protocol, Path(args.output))
    print(f"leaderboard of {len({r['label'] for r in records})} model(s) under {protocol.name}: {page}")
    return 0


def _add_analyze(commands) -> None:
    p = commands.add_parser(
        "analyze",
        help="paper figures: eps-sweep, curves, interpolation, features, time, gallery → PNG + JSON",
        description="mmcoa analyze KIND [options]; mmcoa analyze KIND --help lists a kind's options.",
    )
    p.add_argument("kind", help="eps-sweep, curves, interpolation, features, time or gallery")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the kind's options")
    p.set_defaults(handler=cmd_analyze, saved=folder_saved)


def cmd_analyze(args: argparse.Namespace) -> int:
    from mmcoa.analysis.commands import run_command

    return run_command(args.kind, args.options)


def attack_names(text: str) -> list[str]:
    """``"clean, pgd"`` → ``["clean", "pgd"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def cmd_eval(args: argparse.Namespace) -> int:
    from mmcoa.attacks.settings import build_attacks
    from mmcoa.data import published_dataset_options
    from mmcoa.devices import check_device
    from mmcoa.distributed import world_from_env
    from mmcoa.eval import evaluate, format_table, write_records

    attacks = build_attacks(attack_names(args.attacks), attack_params_from_flags(args), profile=args.profile)
    scoring = Scoring(
        **{
            **profile_settings(Scoring, args.profile),
            **{k: v for k, v in field_values(args, Scoring).items() if v is not None},
        }
    )
    defense = defense_from_flags(args, seed=args.seed)
    args.device = check_device(args.device)
    check_output(args.output, directory=False)
    world, args.device = world_from_env(args.device)  # torchrun: shard the samples
    model, template = _prompted_model(args) if args.prompt else (args.model, args.template)
    if defense is not None:
        model = _defended_model(args, model, defense)
    records = evaluate(
        model,
        args.dataset,
        attacks,
        pretrained=args.pretrained,
        split=args.split,
        data_root=args.data_root,
        download=args.download,
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        template=template,
        logit_scale=args.logit_scale,
        resize=args.resize,
        skip_bad_images=args.skip_bad_images,
        workers=args.workers,
        runtime=runtime_settings(args),
        progress=not args.no_progress,
        world=world,
        scoring=scoring,
        dataset_options=published_dataset_options(args.dataset) if args.profile == PUBLISHED else None,
    )
    if world.is_main:
        write_records(args.output, [{**r, "world_size": world.size} for r in records])
        print(format_table(records))
        print(f"results written to {args.output}")
    return 0


def _defended_model(args: argparse.Namespace, model, defense):
    """``model`` (a name, or a model already loaded) wrapped in the ``--defense``."""
    from mmcoa.models import load_model
    from mmcoa.models.test_time import defend

    if isinstance(model, str):
        model = load_model(model, pretrained=args.pretrained, device=args.device, resize=args.resize)
    return defend(model, defense)


def _prompted_model(args: argparse.Namespace):
    """The model with the prompt of ``--prompt`` on it, and the template to use (a text context
    needs its own placeholder template unless ``--template`` is given)."""
    from mmcoa.models import load_model
    from mmcoa.models.prompts import attach_prompt, read_prompt

    payload = read_prompt(args.prompt)  # a bad file fails before the model loads
    model = load_model(args.model, pretrained=args.pretrained, device=args.device, resize=args.resize)
    template = attach_prompt(model, args.prompt, payload)
    return model, args.template or template


def cmd_demo(args: argparse.Namespace) -> int:
    from mmcoa_demo.demo import run_demo  # the demo is an application beside the library
    from mmcoa.devices import check_device

    args.device = check_device(args.device)
    check_output(args.output, directory=True)
    run_demo(
        args.output,
        data_root=args.data_root,
        device=args.device,
        n_samples=args.n_samples,
        seed=args.seed,
        progress=not args.no_progress,
        mlm=args.mlm,
    )
    return 0


def _add_zoo(commands) -> None:
    from mmcoa.models.zoo import ZOO_ENV, ZooFileAction, parsers_taking_model

    zoo_help = f"a zoo YAML of your own checkpoints (same schema as the shipped one; also ${ZOO_ENV})"
    for p in parsers_taking_model(commands):
        p.add_argument("--zoo", action=ZooFileAction, metavar="FILE", help=zoo_help)
    p = commands.add_parser("zoo", help="the published robust CLIPs by name (--model NAME)")
    p.add_argument("words", nargs="*", metavar="show NAME", help="everything the entry NAME knows")
    p.add_argument("--markdown", action="store_true", help="the listing as a markdown table")
    p.add_argument("--zoo", action=ZooFileAction, metavar="FILE", help=zoo_help)
    p.set_defaults(handler=cmd_zoo)


def cmd_zoo(args: argparse.Namespace) -> int:
    from mmcoa.models.zoo import format_entry, format_listing, get_entry, markdown_table

    if not args.words:
        print(markdown_table() if args.markdown else format_listing())
    elif len(args.words) == 2 and args.words[0] == "show":
        print(format_entry(get_entry(args.words[1])))
    else:
        raise MmcoaError(
            f"mmcoa zoo takes nothing or 'show NAME' (got {' '.join(args.words)!r}); mmcoa zoo lists the names"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mmcoa.models import list_models

    for name in list_models(include_open_clip=args.all):
        print(name)
    if not args.all:
        print(
            "(plus every open_clip architecture: mmcoa models --all; hf-hub:<org>/<name>; "
            "hf:<id or directory>; local-dir:<open_clip model folder, e.g. a run's export/>; "
            "the published robust CLIPs by name: mmcoa zoo)"
        )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from mmcoa.data import describe_datasets

    for row in describe_datasets(args.data_root):
        found = "found" if row["found"] else "not found"
        classes = row["n_classes"] if row["n_classes"] is not None else "?"
        print(
            f"{row['name']:<20} {classes!s:>4} classes  splits={','.join(row['splits'])}  "
            f"{found:<9}  template={row['template']!r}  {row['description']}"
        )
    return 0


def cmd_attacks(args: argparse.Namespace) -> int:
    from mmcoa.attacks import list_attacks

    for row in list_attacks():
        name = row["name"] if row["task"] == "classification" else f"{row['name']} (retrieval)"
        print(f"{name:<20} {row['threat']:<10} {row['description']}  defaults={json.dumps(row['defaults'])}")
    return 0


# -- what an interrupted command leaves (main() prints it after Ctrl-C) ----------------------------
def nothing_saved(args: argparse.Namespace) -> str:
    return "nothing was written"


def file_saved(args: argparse.Namespace) -> str:
    return f"{args.output} was not written (it is written once every attack is done); run the command again"


def folder_saved(args: argparse.Namespace) -> str:
    where = getattr(args, "output", None) or "the output folder"
    return f"the files already in {where} are whole (each is written in one go); run the command again"


def train_saved(args: argparse.Namespace) -> str:
    if args.output is None:
        return nothing_saved(args)
    last = Path(args.output) / "checkpoints" / "last.pt"
    if last.is_file():
        return f"the last checkpoint is {last}; run the same command with --resume to continue from it"
    return (
        f"no checkpoint was saved yet in {args.output} (one is saved every epoch and every "
        "--save-every steps); run the command again to start over"
    )


def suite_saved(args: argparse.Namespace) -> str:
    from mmcoa.eval.suite import CELLS_DIR

    cells = Path(args.output) / CELLS_DIR
    done = len(list(cells.glob("*.json")))
    if not done:
        return f"no cell had finished; nothing was written to {cells}"
    return (
        f"{done} finished cell{'s' if done != 1 else ''} saved in {cells}; run the same "
        "command with --resume to skip them and continue"
    )


if __name__ == "__main__":
    sys.exit(main())
