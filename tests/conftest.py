"""Shared fixtures: tiny models (both backends), small data, tiny masked LMs trained once per
session (saved in Hugging Face format: tests pass the directory, as ``--mlm DIRECTORY``), an
image folder, offline hub. Shared helper functions live in helpers.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import mmcoa
from helpers import shared_across_workers, write_bad_folder, write_folder
from mmcoa.models import ZeroShotClassifier
from tiny_mlm import caption_corpus, train_tiny_mlm

TINY_MODELS = ("tiny-clip", "tiny-clip-hf")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for the whole session (processes the tests start get
    ``OMP_NUM_THREADS=1``): the tiny models gain nothing from more, and on a shared 2-core
    machine two spin-waiting threads made a tiny-clip step up to 50x slower. Modules that name
    it (``pytestmark = pytest.mark.usefixtures("one_thread")``) still may."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", params=TINY_MODELS)
def any_tiny_model(request):
    """Each tiny backend in turn (open_clip and transformers)."""
    return mmcoa.load_model(request.param)


@pytest.fixture(scope="session")
def tiny_model():
    return mmcoa.load_model("tiny-clip")


@pytest.fixture(scope="session")
def synthetic_test():
    return mmcoa.load_dataset("synthetic", split="test", n_samples=16, n_classes=4, image_size=28)


@pytest.fixture()
def classifier(tiny_model, synthetic_test):
    return ZeroShotClassifier(tiny_model, synthetic_test.prompts())


@pytest.fixture()
def batch(synthetic_test):
    images = torch.stack([synthetic_test[i][0] for i in range(8)])
    labels = torch.tensor([synthetic_test[i][1] for i in range(8)])
    return images, labels


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory):
    """``tiny_mlm(corpus, steps=30)``: the directory (a str, for ``mlm=`` and ``--mlm``) of a tiny
    masked LM trained on ``corpus`` (tests/tiny_mlm.py), trained once per session for each
    corpus and step count and shared by every test (and xdist worker) that asks for the same."""

    def make(corpus, steps: int = 30) -> str:
        key = hashlib.sha1(json.dumps([list(corpus), steps]).encode()).hexdigest()[:12]
        train = lambda folder: str(train_tiny_mlm(list(corpus), folder / "mlm", steps=steps))  # noqa: E731
        return shared_across_workers(tmp_path_factory, f"tiny-mlm-{key}", train)[1]

    return make


@pytest.fixture(scope="session")
def synthetic_mlm(tiny_mlm):
    """The tiny MLM on the synthetic dataset's captions (every training template x its class
    names), 30 steps: MMCoA's and the text attacks' candidate source where quality is irrelevant."""
    from mmcoa_demo.pretrain import CAPTION_TEMPLATES

    classnames = mmcoa.load_dataset("synthetic", split="train").classnames
    return tiny_mlm(caption_corpus(classnames, CAPTION_TEMPLATES))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """``imagefolder:`` data written once: 3 classes x 4 small JPEGs (helpers.write_folder)."""
    return write_folder(tmp_path_factory.mktemp("folder") / "images")


@pytest.fixture(scope="session")
def bad_folder(tmp_path_factory):
    """(``imagefolder:`` path, bad file): 8 PNGs in two classes; b/1.png (index 5) is cut short.
    One folder for every xdist worker (the shared torchrun of test_distributed names it)."""
    made = shared_across_workers(
        tmp_path_factory, "bad-folder", lambda root: list(map(str, write_bad_folder(root)))
    )
    return tuple(Path(p) for p in made[1])
