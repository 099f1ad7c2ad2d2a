"""`--log tensorboard`: the training log mirrored to TensorBoard event files, metrics.jsonl
staying the source of truth; a resumed run leaves no doubled steps; without the package the
setting is refused with one line before anything is written."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mmcoa.errors import MmcoaError
from mmcoa.train import logsinks
from mmcoa.train.config import TrainConfig
from mmcoa.train.logsinks import check_log_setting, close_sinks, write_sinks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
tensorboard = pytest.importorskip(
    "tensorboard", reason="the tensorboard extra is not installed (pip install 'mmcoa[tensorboard]')"
)


def _scalars(folder, tag="train/loss") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_training_run_logs_its_metrics_to_tensorboard(tmp_path):
    from mmcoa.train.trainer import train

    run = tmp_path / "run"
    train(
        TrainConfig(
            method="ft-standard", batch_size=16, max_steps=3, lr=1e-3, log="tensorboard", output=str(run)
        ),
        progress=False,
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = _scalars(run / "tensorboard")
    assert [step for step, _ in logged] == [row["step"] for row in rows] == [1, 2, 3]
    assert [value for _, value in logged] == pytest.approx([row["loss"] for row in rows])
    assert [step for step, _ in _scalars(run / "tensorboard", "train/lr")] == [1, 2, 3]


def test_a_resumed_run_purges_the_steps_it_logs_again(tmp_path):
    for step in (1, 2, 3):
        write_sinks("tensorboard", tmp_path, step, {"loss": float(step)})
    close_sinks(tmp_path)
    for step in (3, 4):  # resumed after step 2: step 3 is logged again
        write_sinks("tensorboard", tmp_path, step, {"loss": 10.0 * step, "skipped": True}, final=step == 4)
    assert not logsinks._OPEN
    assert _scalars(tmp_path / "tensorboard") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_no_sink_writes_nothing(tmp_path):
    write_sinks(None, tmp_path, 1, {"loss": 1.0}, final=True)
    assert list(tmp_path.iterdir()) == []


def test_unknown_sink_and_missing_package_are_one_line(monkeypatch):
    with pytest.raises(MmcoaError, match="log must be one of tensorboard"):
        TrainConfig(log="wandb")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    with pytest.raises(MmcoaError, match=r"pip install 'mmcoa\[tensorboard\]'") as error:
        check_log_setting("tensorboard")
    assert "\n" not in str(error.value)
    assert check_log_setting(None) is None
