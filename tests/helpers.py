"""Helpers the test modules share (fixtures live in conftest.py): the perturbation-budget check,
a training run crashed at a step, ``mmcoa`` run in 1 or 2 processes (several commands in one
torchrun when run as a script), fixtures' work shared by the xdist workers, a forward-pass
counter, and
the small on-disk layouts tests write (an image folder, MSCOCO Karpathy, STL-10 and EuroSAT)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from mmcoa.train import trainer


def assert_valid_perturbation(adv: torch.Tensor, images: torch.Tensor, eps: float, norm: str = "linf"):
    """Adversarial images lie in the eps-ball (L-inf or L2) around the images and in [0, 1]."""
    delta = adv - images
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1


class Interrupted(Exception):
    pass


def crash_training_at(config, at: int, monkeypatch) -> None:
    """Run ``train(config)`` until it raises :class:`Interrupted` as step ``at`` starts (a
    crash mid-run: its checkpoints so far are on disk)."""
    step = trainer.TrainLoop.step

    def crashing(self, index, *args):
        if index == at:
            raise Interrupted
        return step(self, index, *args)

    monkeypatch.setattr(trainer.TrainLoop, "step", crashing)
    with pytest.raises(Interrupted):
        trainer.train(config, progress=False)
    monkeypatch.undo()


def shared_across_workers(tmp_path_factory, name: str, make: Callable[[Path], Any]) -> tuple[Path, Any]:
    """The folder ``name`` and ``make(folder)``'s result, made once per test session: the first
    pytest-xdist worker that asks makes it in a folder every worker sees (under a file lock),
    the others wait and read the result back (JSON). For the expensive module and session fixtures, which xdist would
    otherwise build once in every worker that runs one of their tests."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = base / name, base / f"{name}.json"
    with FileLock(str(base / f"{name}.lock")):
        if not done.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(make(folder)))
    return folder, json.loads(done.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs of the demo's minilm-clip (19 dropout layers in its text tower) on synthetic data: the
# determinism tests' settings, shared with the 2-process comparison in test_distributed.
MINILM_SETTINGS = dict(
    model="minilm-clip",
    pretrained="random",
    dataset="synthetic",
    batch_size=8,
    lr=1e-3,
    train_steps=2,  # MMCoA's and FARE's 10 training PGD steps would be most of each run's time
    mlm="minilm",
    k=4,
)
RESUMABLE = dict(save_every=1)  # a run that is crashed or killed: last.pt after every step
MMCOA_FLAGS = {"mmcoa": dict(text_attack_every=2)}  # step 3 reuses step 2's adversarial prompts


def final_weights(run) -> dict:
    """The state dict a finished run saved as ``final.pt``."""
    return torch.load(os.path.join(run, "final.pt"), map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def twice_the_same_minilm_run(folder: Path, **settings) -> tuple[dict, dict]:
    """The final weights of two runs of one minilm-clip command (``MINILM_SETTINGS`` with
    ``settings``) in this process; their folders (about 90 MB a run) are removed."""
    from mmcoa.train.config import TrainConfig

    try:
        for run in ("first", "second"):
            config = TrainConfig(**{**MINILM_SETTINGS, **settings}, output=str(folder / run))
            trainer.train(config, progress=False)
        return final_weights(folder / "first"), final_weights(folder / "second")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def minilm_train_args(method: str, run, steps: int) -> list[str]:
    """``mmcoa train`` arguments of a ``steps``-step ``method`` run of minilm-clip into ``run``."""
    settings = {**MINILM_SETTINGS, **MMCOA_FLAGS.get(method, {}), "method": method, "max_steps": steps}
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    return ["train", *flags, "--output", str(run), "--no-progress"]


def run_mmcoa_here(args: list[str]) -> None:
    """``mmcoa ARGS`` in this process (the 1-process reference of a torchrun comparison without
    starting another interpreter)."""
    from mmcoa.cli import main

    assert main(list(args)) == 0


def torchrun(processes: int) -> list[str]:
    """``torchrun --nproc_per_node N`` on a free local port: prefix it to ``-m mmcoa ARGS`` or a
    script."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return launcher + ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def run_mmcoa(args: list[str], processes: int) -> None:
    """``python -m mmcoa ARGS``, or ``torchrun --nproc_per_node N -m mmcoa ARGS``."""
    launcher = torchrun(processes) if processes > 1 else [sys.executable]
    done = subprocess.run(
        [*launcher, "-m", "mmcoa", *args], env=CHILD_ENV, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_mmcoa_commands(
    commands: list[list[str]], processes: int, folder: Path, last_fails: bool = False
) -> subprocess.CompletedProcess:
    """Several ``mmcoa`` commands in one ``torchrun --nproc_per_node N``: each rank runs them in
    order in one process (this file's ``__main__``; the process group is joined once and kept),
    one launch instead of one per command. The command list is written to ``folder``.
    ``last_fails``: the last command is meant to fail (it ends the launch); the finished
    launch is returned for its caller to check."""
    spec = Path(folder) / "commands.json"
    spec.write_text(json.dumps(commands))
    done = subprocess.run(
        [*torchrun(processes), __file__, str(spec)],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert last_fails or done.returncode == 0, done.stderr[-3000:]
    return done


CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # for subprocess.run


def corrupt_copy(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the image folder at ``tmp_path / "images"`` whose ``dog/1.jpg`` is a truncated
    JPEG; returns (copy, the bad file)."""
    import shutil

    copy = tmp_path / "images"
    shutil.copytree(folder, copy)
    bad = copy / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    return copy, bad


def count_forwarded_samples(classifier):
    """(counts, hook): ``counts`` gets the batch size of every image-encoder forward pass until
    ``hook.remove()``."""
    counts = []
    hook = classifier.model.model.visual.register_forward_pre_hook(
        lambda m, args: counts.append(args[0].shape[0])
    )
    return counts, hook


# -- small layouts on disk ----------------------------------------------------------------------
FOLDER_CLASSES = ("cat", "dog", "bird")


def write_folder(root: Path, per_class: int = 4, size=(50, 37)) -> Path:
    """An imagefolder of small JPEGs (classes :data:`FOLDER_CLASSES`), some grey (8-bit L) and
    some RGB."""
    rng = np.random.default_rng(0)
    for name in FOLDER_CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 3 == 2 else image).save(root / name / f"{i}.jpg", quality=90)
    return root


def write_bad_folder(root: Path) -> tuple[Path, Path]:
    """(folder, bad file): ``root/imgs`` holds 8 PNGs in two classes; b/1.png (index 5) is cut
    short."""
    rng = np.random.default_rng(0)
    for name in "ab":
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((40, 40, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / "imgs" / name / f"{i}.png")
    bad = root / "imgs" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return root / "imgs", bad


COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (20, 40, 230),
    "yellow": (230, 220, 20),
    "black": (10, 10, 10),
}
TEST_IMAGES = ("red", "green", "blue")
THINGS = ("dog", "cat", "car", "boat", "bird")


def captions_for(colour: str) -> list[str]:
    return [f"A {colour} {thing} sits on the grass." for thing in THINGS]


def make_layout(root, extra_entries=()):
    """MSCOCO Karpathy under ``root``: 3 test images (5 captions each), 1 val and 1 restval
    image, Karpathy's JSON format."""
    entries = []
    for index, (colour, split) in enumerate(
        [(c, "test") for c in TEST_IMAGES] + [("yellow", "val"), ("black", "restval")]
    ):
        folder = "val2014" if split != "restval" else "train2014"
        filename = f"COCO_{folder}_{index:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        pixels = torch.full((40, 48, 3), 0, dtype=torch.uint8) + torch.tensor(
            COLOURS[colour], dtype=torch.uint8
        )
        pixels[index * 4 : index * 4 + 10, 5:20] = 255 - pixels[0, 0]
        Image.fromarray(pixels.numpy()).save(root / folder / filename)
        entries.append(
            {
                "filepath": folder,
                "filename": filename,
                "split": split,
                "cocoid": index,
                "sentences": [{"raw": text, "tokens": text.split()} for text in captions_for(colour)],
            }
        )
    entries.extend(extra_entries)
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return root


def save_image(path: Path, seed: int, size=(24, 20), mode: str = "RGB") -> None:
    """A small random image; the format follows the suffix (.jpg/.JPEG → JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "CMYK": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# Fake paper-dataset layouts: each writes the set under root and returns {split: n_images}, class names.
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
EUROSAT_CLASSES = ("AnnualCrop", "HerbaceousVegetation", "SeaLake")


def fake_stl10(root: Path):
    folder = root / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 4)):
        pixels = rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(pixels.tobytes())
        (folder / f"{split}_y.bin").write_bytes(np.arange(1, n + 1, dtype=np.uint8).tobytes())
    write_lines(folder / "class_names.txt", STL10_CLASSES)
    return {"train": 5, "test": 4}, STL10_CLASSES


def fake_eurosat(root: Path, per_class: int = 5):
    for c, name in enumerate(EUROSAT_CLASSES):
        for k in range(1, per_class + 1):
            save_image(root / "eurosat" / "2750" / name / f"{name}_{k}.jpg", 10 * c + k, size=(64, 64))
    return {"train": 12, "test": 3}, ["annual crop", "herbaceous vegetation", "sea lake"]


if __name__ == "__main__":  # a rank of run_mmcoa_commands: python helpers.py COMMANDS.json
    import importlib

    from mmcoa.cli import main

    for command in json.loads(Path(sys.argv[1]).read_text()):
        if command[0] == "--call":  # ["--call", "test_module:function", *args]: a test's own step
            module, function = command[1].split(":")
            getattr(importlib.import_module(module), function)(*command[2:])
            continue
        code = main(command)
        if code:
            sys.exit(f"mmcoa {' '.join(command)}: exit status {code}")


# -- the HTML pages in a browser ----------------------------------------------------------------
def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (make setup installs "
    "it when run as root: apt-get install chromium)",
)


def render_dom(page: Path, click: str | None = None) -> tuple[str, list[str]]:
    """The DOM of ``page`` after headless Chromium ran its scripts (after a click on the first
    element matching the CSS selector ``click``), and the console problems it logged."""
    if click:
        copy = page.with_name(f"clicked-{page.name}")
        script = f"<script>document.querySelector({json.dumps(click)}).click();</script></body>"
        copy.write_text(page.read_text().replace("</body>", script))
        page = copy
    result = chromium("--dump-dom", page.as_uri())
    return result.stdout, console_problems(result.stderr)


def first_items(dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` items of ``dataset`` as one batch: images ``[n, 3, H, W]`` and labels."""
    images = torch.stack([dataset[i][0] for i in range(n)])
    return images, torch.tensor([dataset[i][1] for i in range(n)])


@contextlib.contextmanager
def nudged_text_tower(model):
    """``model``'s first text-tower weight moved by 1e-3 in place (a weight change a cache keyed
    on the text tower must see), restored on exit."""
    _, param = next(model.tower_parameters("text"))
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.add_(1e-3)
        yield
    finally:
        with torch.no_grad():
            param.copy_(saved)
