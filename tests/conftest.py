"""Shared fixtures: tiny models (both backends), small data, offline hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import mmcoa
from mmcoa.models import ZeroShotClassifier

TINY_MODELS = ("tiny-clip", "tiny-clip-hf")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the machine's cores are shared, and oversubscription stalls training-heavy tests."""
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
