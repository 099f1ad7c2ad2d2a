"""CUDA checks, run by bench/gpu_check.sh on a GPU machine: every training method steps on the
GPU in bf16 (its attacks draw their randomness on the GPU), and evaluation attacks there match
the pixel budget. Skipped where torch sees no CUDA device (CI and the CPU machines)."""

from __future__ import annotations

import os

import pytest
import torch

import mmcoa
from mmcoa.attacks import PGD
from mmcoa.models import ZeroShotClassifier
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS
from mmcoa.train.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def mlm(synthetic_mlm):
    return synthetic_mlm


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_on_cuda(name, precision, mlm, tmp_path):
    config = TrainConfig(
        method=name,
        model="tiny-clip",
        batch_size=16,
        max_steps=2,
        lr=1e-3,
        mlm=mlm,
        precision=precision,
        device="cuda",
        output=str(tmp_path / "run"),
    )
    metrics = train(config, progress=False)
    assert metrics["steps"] == 2 and metrics["final_loss"] == metrics["final_loss"]  # not NaN
    assert os.path.isfile(tmp_path / "run" / "final.pt")


def test_pgd_on_cuda_keeps_the_budget():
    model = mmcoa.load_model("tiny-clip", pretrained="random", device="cuda")
    data = mmcoa.load_dataset("synthetic", split="test")
    images = torch.stack([data[i][0] for i in range(8)]).cuda()
    labels = torch.tensor([data[i][1] for i in range(8)]).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    adv = PGD(eps=4 / 255, n_steps=5, precision="bf16")(
        ZeroShotClassifier(model, data.prompts()), images, labels, generator
    ).images
    assert adv.is_cuda and (adv - images).abs().max() <= 4 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_the_batch_pipeline_pins_and_copies_exactly_to_cuda(image_folder):
    """uint8 batches from 2 workers, pinned, copied with non_blocking and scaled on the GPU, are
    bit-identical to the CPU's float images (x / 255 is correctly rounded on both)."""
    from mmcoa.data.loading import BatchLoader

    dataset = mmcoa.load_dataset(f"imagefolder:{image_folder}")
    batches = [[0, 5, 9], [2, 1]]
    for batch in BatchLoader(dataset, batches, device="cuda", workers=2):
        expected = torch.stack([dataset[i][0] for i in batch.indices])
        assert batch.images.is_cuda and torch.equal(batch.images.cpu(), expected)
