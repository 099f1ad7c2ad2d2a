"""Gradient-masking sanity checks: the evidence robustness papers are asked for (Carlini et al.
2019, https://arxiv.org/abs/1902.06705, §5; AutoAttack's warning when Square beats the
white-box attacks). An evaluation whose gradients are masked looks robust to PGD without being
robust; these checks catch the usual signs:

1. ``eps-monotone``: PGD robust accuracy does not rise with the budget (eps 1, 2, 4, 8, 16/255);
2. ``steps-monotone``: nor with more iterations (10, 50, 100 steps at the check eps);
3. ``large-eps``: at eps 64/255 accuracy is at or below chance (1 / number of classes);
4. ``black-box``: Square (gradient-free) is not stronger than PGD at the check eps;
5. ``noise``: uniform noise in the same ball lowers accuracy by at most ``noise_fraction`` of
   PGD's drop.

Each comparison allows ``max(tolerance, 1 / n_samples)``, since one flip is noise, not masking.
:func:`run_sanity` measures everything in one :func:`mmcoa.eval.evaluate` call;
:func:`sanity_checks` works on plain numbers. Details: ``docs/reports.md``, "sanity".
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from mmcoa.analysis.attacked import make_attack
from mmcoa.analysis.plotting import new_figure, write_analysis
from mmcoa.attacks import Attack
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.eval.results import write_records
from mmcoa.files import write_text_atomic
from mmcoa.models import VisionLanguageModel
from mmcoa.report.render import table_markdown
from mmcoa.report.tables import Column, Row, Table

SANITY_EPS = (1, 2, 4, 8, 16)  # units of 1/255
SANITY_STEPS = (10, 50, 100)
LARGE_EPS = 64  # units of 1/255
CHECK_EPS = 1  # the paper's evaluation budget, units of 1/255
SQUARE_QUERIES = 5000  # AutoAttack's standard Square budget
STEP_SIZE = 1  # PGD step, units of 1/255 (the paper's test setting)
TOLERANCE = 0.01  # accuracy fraction; the slack is at least one sample
NOISE_FRACTION = 0.5  # noise may remove at most this share of PGD's drop
NAME = "sanity"


@dataclass(frozen=True)
class SanityPlan:
    """The budgets :func:`run_sanity` measures (eps and step size in units of 1/255); bad values
    are one-line errors at construction, before any model work."""

    eps: tuple[float, ...] = SANITY_EPS
    steps: tuple[int, ...] = SANITY_STEPS
    check_eps: float = CHECK_EPS
    large_eps: float = LARGE_EPS
    square_queries: int = SQUARE_QUERIES
    step_size: float = STEP_SIZE

    def __post_init__(self):
        object.__setattr__(self, "eps", _sorted_distinct("eps", self.eps, _budget))
        object.__setattr__(self, "steps", _sorted_distinct("steps", self.steps, _count))
        for name in ("check_eps", "large_eps", "step_size"):
            _budget(name, getattr(self, name))
        _count("square_queries", self.square_queries)

    def pgd(self, eps: float, n_steps: int | None = None) -> Attack:
        """PGD at ``eps`` (1/255) with ``n_steps`` (default: the most of :attr:`steps`)."""
        return make_attack(
            "pgd", eps=eps / 255, step_size=self.step_size / 255, n_steps=n_steps or max(self.steps)
        )

    def square(self) -> Attack:
        return make_attack("square", eps=self.check_eps / 255, n_queries=self.square_queries)

    def noise(self) -> Attack:
        return make_attack("noise", eps=self.check_eps / 255)

    def attacks(self) -> list[Attack]:
        """Clean, PGD over the eps sweep and at the large eps (most steps), PGD over the steps
        at the check eps, Square and uniform noise at the check eps; each setting once."""
        wanted = [
            make_attack("clean"),
            *[self.pgd(e) for e in (*self.eps, self.large_eps)],
            *[self.pgd(self.check_eps, s) for s in self.steps],
            self.square(),
            self.noise(),
        ]
        return list({_key(a.name, a.params()): a for a in wanted}.values())


def _sorted_distinct(name: str, values: Sequence, check) -> tuple:
    """``values`` checked one by one, then sorted; at least two distinct ones."""
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    for value in values:
        check(name, value)
    if len(set(values)) < 2:
        raise MmcoaError(
            f"{name} needs at least two distinct values to check monotonicity; got {list(values)}"
        )
    return tuple(sorted(set(values)))


def _budget(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 255:
        raise MmcoaError(f"{name} must be in (0, 255] (units of 1/255); got {value!r}")


def _count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MmcoaError(f"{name} takes positive integers; got {value!r}")


def _key(name: str, params: dict) -> str:
    return json.dumps([name, params], sort_keys=True, default=str)


# -- the numbers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SanityNumbers:
    """Accuracies (fractions) the checks read. ``eps``: PGD (most steps) by eps in 1/255;
    ``steps``: PGD at ``check_eps`` by iterations; ``large``: PGD at ``large_eps``."""

    clean: float
    eps: dict[float, float]
    steps: dict[int, float]
    large_eps: float
    large: float
    check_eps: float
    square: float
    noise: float
    n_samples: int
    n_classes: int

    @property
    def pgd(self) -> float:
        """PGD at the check eps with the most steps: the white-box reference."""
        return self.steps[max(self.steps)]

    def jsonable(self) -> dict:
        data = asdict(self)
        data["eps"] = {f"{e:g}": a for e, a in self.eps.items()}
        data["steps"] = {str(s): a for s, a in self.steps.items()}
        return {**data, "pgd": self.pgd}


def sanity_numbers(records: list[dict], plan: SanityPlan, n_classes: int) -> SanityNumbers:
    """The accuracies of the plan's attacks, looked up in ``evaluate``'s records."""
    found = {_key(r["attack"], r["attack_params"]): r["accuracy"] for r in records}

    def accuracy(attack: Attack) -> float:
        return found[_key(attack.name, attack.params())]

    return SanityNumbers(
        clean=accuracy(make_attack("clean")),
        eps={e: accuracy(plan.pgd(e)) for e in plan.eps},
        steps={s: accuracy(plan.pgd(plan.check_eps, s)) for s in plan.steps},
        large_eps=plan.large_eps,
        large=accuracy(plan.pgd(plan.large_eps)),
        check_eps=plan.check_eps,
        square=accuracy(plan.square()),
        noise=accuracy(plan.noise()),
        n_samples=records[0]["n_samples"],
        n_classes=n_classes,
    )


# -- the checks --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One check's verdict, the numbers behind it (text, in %) and what it requires."""

    name: str
    passed: bool
    numbers: str
    criterion: str

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "FAIL"


def slack(tolerance: float, n_samples: int) -> float:
    """What a comparison forgives: one sample, or ``tolerance`` when that is larger."""
    return max(tolerance, 1 / n_samples)


def _above(value: float, limit: float) -> bool:
    """``value > limit`` beyond rounding (accuracies are ratios: (k + 1)/n vs k/n + 1/n)."""
    return value > limit + 1e-9


def _non_increasing(name: str, points: dict, unit: str, grows: str, allowed: float) -> Check:
    """Passes unless a point exceeds the one before it by more than ``allowed``."""
    xs = sorted(points)
    rises = [(a, b) for a, b in zip(xs, xs[1:]) if _above(points[b], points[a] + allowed)]
    shown = ", ".join(f"{x:g}{unit}: {_pct(points[x])}" for x in xs)
    if rises:
        shown += "; rises " + ", ".join(f"{a:g}→{b:g}" for a, b in rises)
    return Check(
        name,
        not rises,
        shown,
        f"robust accuracy never rises by more than {_pct(allowed)} points as {grows} grows",
    )


def sanity_checks(
    numbers: SanityNumbers, *, tolerance: float = TOLERANCE, noise_fraction: float = NOISE_FRACTION
) -> list[Check]:
    """The five checks (module docstring) on ``numbers``; comparisons allow
    :func:`slack` (``tolerance`` or one sample)."""
    check_tolerances(tolerance, noise_fraction)
    allowed = slack(tolerance, numbers.n_samples)
    chance = 1 / numbers.n_classes
    at = f"eps {numbers.check_eps:g}/255"
    pgd_drop, noise_drop = numbers.clean - numbers.pgd, numbers.clean - numbers.noise
    return [
        _non_increasing("eps-monotone", numbers.eps, "/255", "eps", allowed),
        _non_increasing("steps-monotone", numbers.steps, " steps", "the number of steps", allowed),
        Check(
            "large-eps",
            not _above(numbers.large, chance + allowed),
            f"eps {numbers.large_eps:g}/255: {_pct(numbers.large)}; chance {_pct(chance)}",
            f"accuracy at most chance (1/{numbers.n_classes}) + {_pct(allowed)} points",
        ),
        Check(
            "black-box",
            not _above(numbers.pgd - allowed, numbers.square),
            f"{at}: Square {_pct(numbers.square)}, PGD {_pct(numbers.pgd)}",
            f"Square accuracy at least PGD's − {_pct(allowed)} points",
        ),
        Check(
            "noise",
            not _above(noise_drop, noise_fraction * pgd_drop + allowed),
            f"{at}: clean {_pct(numbers.clean)}, noise {_pct(numbers.noise)} (drop {_pct(noise_drop)}), "
            f"PGD {_pct(numbers.pgd)} (drop {_pct(pgd_drop)})",
            f"noise drop at most {noise_fraction:g} × PGD drop + {_pct(allowed)} points",
        ),
    ]


def check_tolerances(tolerance: float, noise_fraction: float) -> None:
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise MmcoaError(f"tolerance must be an accuracy fraction in [0, 1); got {tolerance!r}")
    if not (isinstance(noise_fraction, (int, float)) and 0 <= noise_fraction <= 1):
        raise MmcoaError(f"noise_fraction must be in [0, 1]; got {noise_fraction!r}")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


# -- running and writing -----------------------------------------------------------------------
def run_sanity(
    model: VisionLanguageModel,
    dataset,
    *,
    eps: Sequence[float] = SANITY_EPS,
    steps: Sequence[int] = SANITY_STEPS,
    check_eps: float = CHECK_EPS,
    large_eps: float = LARGE_EPS,
    square_queries: int = SQUARE_QUERIES,
    step_size: float = STEP_SIZE,
    n_samples: int | None = 500,
    batch_size: int = 128,
    seed: int = 0,
    template: str | None = None,
    tolerance: float = TOLERANCE,
    noise_fraction: float = NOISE_FRACTION,
    output_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """Run the five gradient-masking checks on ``model`` and ``dataset``.

    Budgets (``eps``, ``check_eps``, ``large_eps``, ``step_size``) are in units of 1/255.
    Returns ``{"passed", "checks": [{"name", "passed", "result", "numbers", "criterion"}],
    "numbers", "plan", "records", "files"}``; with ``output_dir``, ``files`` maps ``table``,
    ``json``, ``png`` and ``records`` to the files written there (:func:`write_sanity`).
    Every argument is checked before any evaluation."""
    plan = SanityPlan(eps, steps, check_eps, large_eps, square_queries, step_size)
    check_tolerances(tolerance, noise_fraction)
    records = evaluate(
        model,
        dataset,
        plan.attacks(),
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
        template=template,
        progress=progress,
    )
    records = [{**r, "label": model.describe(), "analysis": NAME} for r in records]
    numbers = sanity_numbers(records, plan, len(dataset.classnames))
    checks = sanity_checks(numbers, tolerance=tolerance, noise_fraction=noise_fraction)
    summary = {
        "passed": all(c.passed for c in checks),
        "checks": [{**asdict(c), "result": c.result} for c in checks],
        "numbers": numbers.jsonable(),
        "plan": asdict(plan),
        "tolerance": tolerance,
        "noise_fraction": noise_fraction,
        "model": model.describe(),
        "dataset": f"{dataset.name} {dataset.split}",
        "records": records,
        "files": {},
    }
    if output_dir is not None:
        summary["files"] = write_sanity(summary, numbers, checks, output_dir)
    return summary


def write_sanity(
    summary: dict,
    numbers: SanityNumbers,
    checks: list[Check],
    output_dir: str | os.PathLike,
    name: str = NAME,
) -> dict[str, str]:
    """``NAME.md`` (the table), ``NAME.png`` (the three panels), ``NAME.json`` (the analysis
    summary ``mmcoa report`` embeds, with the same table) and ``NAME_records.json``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    table = _table(checks, summary)
    write_records(output / f"{name}_records.json", summary["records"])
    write_text_atomic(output / f"{name}.md", table_markdown(table) + "\n")
    data = {k: v for k, v in summary.items() if k not in ("records", "files")}
    path = write_analysis(
        output,
        name,
        analysis=NAME,
        title=table.title,
        figure=_figure(numbers, checks),
        columns=["check", "result", "numbers (accuracy %)", "criterion"],
        rows=[[r.label, *r.values] for r in table.rows],
        data=data,
        notes=table.notes,
    )
    return {
        "table": str(output / f"{name}.md"),
        "json": str(path),
        "png": str(path.with_suffix(".png")),
        "records": str(output / f"{name}_records.json"),
    }


def _table(checks: list[Check], summary: dict) -> Table:
    passed = sum(c.passed for c in checks)
    title = (
        f"Gradient-masking sanity checks (Carlini et al. 2019): {passed}/{len(checks)} PASS "
        f"— {summary['model']}, {summary['dataset']}"
    )
    plan, n = summary["plan"], summary["numbers"]["n_samples"]
    notes = [
        f"PGD: step {plan['step_size']:g}/255, {max(plan['steps'])} steps in the eps sweep; "
        f"Square: {plan['square_queries']} queries; {n} samples; slack "
        f"{_pct(slack(summary['tolerance'], n))} points (one sample or the tolerance).",
        "Carlini et al. 2019, arXiv:1902.06705; Croce & Hein 2020, arXiv:2003.01690.",
    ]
    return Table(
        NAME,
        title,
        [Column("", "result"), Column("", "numbers (accuracy %)"), Column("", "criterion")],
        [Row(c.name, [c.result, c.numbers, c.criterion]) for c in checks],
        notes,
        corner="check",
    )


def _figure(numbers: SanityNumbers, checks: list[Check]):
    verdict = {c.name: c.result for c in checks}
    figure, (sweep, steps, bars) = new_figure(16, 5, ncols=3)
    _plot_sweep(sweep, numbers, verdict)
    _plot_line(steps, numbers.steps, "PGD iterations", f"PGD at ε {numbers.check_eps:g}/255")
    steps.set_xticks(sorted(numbers.steps))
    steps.set_title(
        f"steps-monotone: {verdict['steps-monotone']}", color=_color(verdict["steps-monotone"] == "PASS")
    )
    _plot_bars(bars, numbers, verdict)
    figure.suptitle(
        f"Gradient-masking sanity checks: {sum(c.passed for c in checks)}/{len(checks)} PASS "
        "(Carlini et al. 2019)"
    )
    figure.subplots_adjust(top=0.84, wspace=0.28, left=0.05, right=0.98, bottom=0.13)
    return figure


def _plot_sweep(ax, numbers: SanityNumbers, verdict: dict) -> None:
    _plot_line(ax, numbers.eps, "perturbation budget ε (L-inf, units of 1/255, log scale)", "PGD")
    ax.plot(
        [numbers.large_eps],
        [100 * numbers.large],
        marker="s",
        color="tab:red",
        linestyle="none",
        label=f"PGD at ε {numbers.large_eps:g}/255",
    )
    ax.axhline(100 / numbers.n_classes, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.axhline(100 * numbers.clean, color="tab:green", linestyle="dotted", linewidth=1, label="clean")
    ax.set_xscale("log", base=2)
    ticks = [*numbers.eps, numbers.large_eps]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ok = verdict["eps-monotone"] == verdict["large-eps"] == "PASS"
    ax.set_title(
        f"eps-monotone: {verdict['eps-monotone']} · large-eps: {verdict['large-eps']}", color=_color(ok)
    )
    ax.legend(fontsize=8)  # again, with the points added after the line


def _plot_line(ax, points: dict, xlabel: str, label: str) -> None:
    xs = sorted(points)
    ax.plot(xs, [100 * points[x] for x in xs], marker="o", color="tab:blue", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_bars(ax, numbers: SanityNumbers, verdict: dict) -> None:
    names = ["clean", "uniform\nnoise", "Square\n(black-box)", "PGD\n(white-box)"]
    values = [numbers.clean, numbers.noise, numbers.square, numbers.pgd]
    ax.bar(names, [100 * v for v in values], color=["tab:green", "tab:gray", "tab:orange", "tab:blue"])
    for x, value in enumerate(values):
        ax.text(x, 100 * value + 1.5, _pct(value), ha="center", fontsize=9)
    ax.set_ylabel(f"accuracy at ε {numbers.check_eps:g}/255 (%)")
    ax.set_ylim(0, 105)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(alpha=0.3, axis="y")
    ok = verdict["black-box"] == verdict["noise"] == "PASS"
    ax.set_title(f"black-box: {verdict['black-box']} · noise: {verdict['noise']}", color=_color(ok))


def _color(passed: bool) -> str:
    return "tab:green" if passed else "tab:red"
