"""``mmcoa analyze sanity``: the PASS/FAIL logic of each gradient-masking check on hand-made
numbers, argument errors before any work, and one small end-to-end run on the tiny model
(table, JSON, PNG, records; the report embeds it)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mmcoa.analysis.commands import run_command
from mmcoa.analysis.sanity import SanityNumbers, SanityPlan, run_sanity, sanity_checks, slack
from mmcoa.errors import MmcoaError

pytestmark = pytest.mark.usefixtures("one_thread")

# a healthy evaluation: monotone, 0 % at the large eps, Square weaker than PGD, noise harmless
HEALTHY = SanityNumbers(
    clean=0.80,
    eps={1: 0.50, 2: 0.30, 4: 0.10, 8: 0.02, 16: 0.0},
    steps={10: 0.55, 50: 0.51, 100: 0.50},
    large_eps=64,
    large=0.0,
    check_eps=1,
    square=0.60,
    noise=0.78,
    n_samples=1000,
    n_classes=10,
)


def _verdicts(numbers: SanityNumbers, **kwargs) -> dict[str, bool]:
    return {c.name: c.passed for c in sanity_checks(numbers, **kwargs)}


def test_a_healthy_evaluation_passes_every_check():
    checks = sanity_checks(HEALTHY)
    assert [c.name for c in checks] == ["eps-monotone", "steps-monotone", "large-eps", "black-box", "noise"]
    assert all(c.passed and c.result == "PASS" for c in checks)
    assert "1/255: 50.00" in checks[0].numbers and "Square 60.00, PGD 50.00" in checks[3].numbers


@pytest.mark.parametrize(
    "change,failing",
    [
        (dict(eps={1: 0.50, 2: 0.30, 4: 0.35, 8: 0.02, 16: 0.0}), "eps-monotone"),  # rises at 4
        (dict(steps={10: 0.50, 50: 0.53, 100: 0.50}), "steps-monotone"),  # rises at 50
        (dict(large=0.20), "large-eps"),  # chance 0.10
        (dict(square=0.40), "black-box"),  # beats PGD
        (dict(noise=0.60), "noise"),  # drop 0.20 > 0.15
    ],
)
def test_each_failure_fails_its_check_only(change, failing):
    verdicts = _verdicts(dataclasses.replace(HEALTHY, **change))
    assert [name for name, passed in verdicts.items() if not passed] == [failing]


def test_the_failure_names_where_the_sweep_rises():
    check = sanity_checks(dataclasses.replace(HEALTHY, eps={1: 0.5, 2: 0.6, 4: 0.1}))[0]
    assert not check.passed and "rises 1→2" in check.numbers


@pytest.mark.parametrize(
    "name,passing,failing",
    [
        ("eps-monotone", dict(eps={1: 0.50, 2: 0.51}), dict(eps={1: 0.50, 2: 0.52})),
        ("steps-monotone", dict(steps={10: 0.50, 100: 0.51}), dict(steps={10: 0.50, 100: 0.515})),
        ("large-eps", dict(large=0.11), dict(large=0.111)),
        ("black-box", dict(square=0.49), dict(square=0.489)),
        ("noise", dict(noise=0.64), dict(noise=0.63)),  # PGD drop 0.30: noise may drop 0.15 + 0.01
    ],
)
def test_the_slack_is_the_tolerance_at_its_edge(name, passing, failing):
    assert _verdicts(dataclasses.replace(HEALTHY, **passing))[name]
    assert not _verdicts(dataclasses.replace(HEALTHY, **failing))[name]


def test_the_slack_is_at_least_one_sample():
    assert slack(0.01, 1000) == 0.01 and slack(0.01, 20) == 0.05
    small = dataclasses.replace(HEALTHY, n_samples=20, eps={1: 0.50, 2: 0.55})  # one sample more
    assert _verdicts(small)["eps-monotone"]
    assert not _verdicts(dataclasses.replace(small, eps={1: 0.50, 2: 0.60}))["eps-monotone"]


def test_tolerance_and_noise_fraction_are_parameters():
    numbers = dataclasses.replace(HEALTHY, square=0.45, noise=0.70)  # Square 5 points stronger
    assert not _verdicts(numbers)["black-box"] and _verdicts(numbers, tolerance=0.05)["black-box"]
    assert _verdicts(numbers)["noise"] and not _verdicts(numbers, noise_fraction=0.25)["noise"]


def test_no_pgd_drop_means_noise_may_not_drop_either():
    flat = dataclasses.replace(HEALTHY, steps={10: 0.80, 100: 0.80})
    assert _verdicts(dataclasses.replace(flat, noise=0.80))["noise"]
    assert not _verdicts(dataclasses.replace(flat, noise=0.70))["noise"]


@pytest.mark.parametrize(
    "params,message",
    [
        (dict(eps=(1,)), "eps needs at least two distinct values"),
        (dict(eps=(1, 0)), r"eps must be in \(0, 255\]"),
        (dict(eps=(1, 300)), r"eps must be in \(0, 255\]"),
        (dict(steps=(10, 2.5)), "steps takes positive integers; got 2.5"),
        (dict(steps=(10, 0)), "steps takes positive integers; got 0"),
        (dict(check_eps=0), r"check_eps must be in \(0, 255\]"),
        (dict(large_eps=-1), r"large_eps must be in \(0, 255\]"),
        (dict(square_queries=0), "square_queries takes positive integers"),
        (dict(step_size=0), r"step_size must be in \(0, 255\]"),
    ],
)
def test_bad_budgets_are_one_line_errors(params, message):
    with pytest.raises(MmcoaError, match=message) as caught:
        SanityPlan(**params)
    assert "\n" not in str(caught.value)


def test_bad_input_fails_before_any_evaluation(tiny_model, synthetic_test, tmp_path, monkeypatch):
    import mmcoa.analysis.sanity as sanity

    monkeypatch.setattr(sanity, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    for kwargs, message in [
        (dict(tolerance=1.5), "tolerance must be"),
        (dict(noise_fraction=-1), "noise_fraction"),
        (dict(steps=(5,)), "steps needs at least two"),
    ]:
        with pytest.raises(MmcoaError, match=message):
            run_sanity(tiny_model, synthetic_test, output_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_the_plan_measures_each_setting_once():
    plan = SanityPlan(eps=(4, 1, 2), steps=(100, 10), check_eps=1, large_eps=64, square_queries=7)
    assert plan.eps == (1, 2, 4) and plan.steps == (10, 100)
    settings = [(a.name, a.params().get("eps"), a.params().get("n_steps")) for a in plan.attacks()]
    # PGD at eps 1/255 with 100 steps is both a sweep point and the steps check's last point
    assert len(settings) == len(set(settings)) == 1 + 4 + 1 + 2
    assert ("square", pytest.approx(1 / 255), None) in settings and settings[-1][0] == "noise"
    assert plan.square().params()["n_queries"] == 7
    assert all(a.params()["step_size"] == pytest.approx(1 / 255) for a in plan.attacks() if a.name == "pgd")


def test_defaults_are_the_documented_budgets():
    plan = SanityPlan()
    assert (plan.eps, plan.steps, plan.check_eps, plan.large_eps, plan.square_queries, plan.step_size) == (
        (1, 2, 4, 8, 16),
        (10, 50, 100),
        1,
        64,
        5000,
        1,
    )


def test_end_to_end_on_the_tiny_model(tiny_model, synthetic_test, tmp_path):
    summary = run_sanity(
        tiny_model,
        synthetic_test,
        eps=(1, 4),
        steps=(1, 3),
        check_eps=2,
        large_eps=32,
        square_queries=10,
        n_samples=16,
        batch_size=8,
        output_dir=tmp_path,
    )
    assert [c["name"] for c in summary["checks"]] == [
        "eps-monotone",
        "steps-monotone",
        "large-eps",
        "black-box",
        "noise",
    ]
    assert summary["passed"] == all(c["passed"] for c in summary["checks"])
    numbers = summary["numbers"]
    assert set(numbers["eps"]) == {"1", "4"} and set(numbers["steps"]) == {"1", "3"}
    assert (
        numbers["pgd"] == numbers["steps"]["3"] and numbers["n_samples"] == 16 and numbers["n_classes"] == 4
    )
    files = summary["files"]
    assert sorted(files) == ["json", "png", "records", "table"]
    table = (tmp_path / "sanity.md").read_text()
    assert "| check | result |" in table and all(c["name"] in table for c in summary["checks"])
    assert (tmp_path / "sanity.png").read_bytes()[:4] == b"\x89PNG"
    written = json.loads((tmp_path / "sanity.json").read_text())
    assert written["analysis"] == "sanity" and written["figure"] == "sanity.png"
    assert [row[1] for row in written["table"]["rows"]] == [c["result"] for c in summary["checks"]]
    assert written["data"]["numbers"] == numbers
    records = json.loads((tmp_path / "sanity_records.json").read_text())
    assert {r["attack"] for r in records} == {"clean", "pgd", "square", "noise"}
    assert all(r["analysis"] == "sanity" for r in records)


def test_command_line_and_report(tmp_path, capsys):
    from mmcoa.report import write_report

    output = tmp_path / "sanity"
    assert (
        run_command(
            "sanity",
            [
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--n-samples",
                "8",
                "--eps",
                "1,2",
                "--n-steps",
                "1,2",
                "--square-queries",
                "5",
                "--output",
                str(output),
                "--no-progress",
            ],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "eps-monotone" in out and ("PASS" in out or "FAIL" in out) and "sanity.md" in out
    page = write_report([output], tmp_path / "report")
    markdown = (page.parent / "report.md").read_text()
    assert "Gradient-masking sanity checks" in markdown and "## Tables" not in markdown  # figure only


def test_command_line_errors_before_loading(tmp_path):
    for flags, message in [
        (["--n-steps", "10,x"], "--n-steps takes comma-separated numbers"),
        (["--eps", "4"], "eps needs at least two"),
        (["--check-eps", "0"], "--check-eps must be from 0.1 to 255"),
        (["--step-size", "0.0039"], "--step-size is in units of 1/255"),
    ]:
        with pytest.raises(MmcoaError, match=message):
            run_command(
                "sanity",
                [
                    "--model",
                    "no-such-model",
                    "--dataset",
                    "synthetic",
                    "--output",
                    str(tmp_path / "o"),
                    *flags,
                ],
            )
