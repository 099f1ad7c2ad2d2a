"""The class-aware contrastive loss against a hand computation."""

from __future__ import annotations

import math

import torch

from mmcoa.train import class_aware_contrastive_loss


def test_matches_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    scale = torch.tensor(2.0)
    loss = class_aware_contrastive_loss(image, text, labels, scale)

    s = 2.0 * math.sqrt(0.5)  # scaled cosine of image 2 with either prompt
    cos = [[2.0, 0.0], [0.0, 2.0], [s, s]]  # [image][class], already scaled
    i2t = [-math.log(math.exp(cos[i][labels[i]]) / sum(math.exp(c) for c in cos[i])) for i in range(3)]
    image_to_text = sum(i2t) / 3
    # text→image: class 0 targets images 0 and 2 (1/2 each), class 1 targets image 1
    col0 = [cos[i][0] for i in range(3)]
    col1 = [cos[i][1] for i in range(3)]
    log_softmax = lambda col, j: col[j] - math.log(sum(math.exp(c) for c in col))  # noqa: E731
    t2i_0 = -(0.5 * log_softmax(col0, 0) + 0.5 * log_softmax(col0, 2))
    t2i_1 = -log_softmax(col1, 1)
    expected = (image_to_text + (t2i_0 + t2i_1) / 2) / 2
    assert abs(float(loss) - expected) < 1e-5


def test_same_class_images_are_not_negatives():
    """Two identical images of one class, aligned with their prompt: the loss sits at its floor
    (one image's loss plus the entropy of the uniform text→image target, log 2 / 2), while
    arange(batch) targets over per-sample prompts cannot drop below log 2 image→text."""
    text = torch.eye(3)
    scale = torch.tensor(10.0)
    one = class_aware_contrastive_loss(torch.eye(3)[:1], text, torch.tensor([0]), scale)
    images = torch.eye(3)[[0, 0]]
    two = class_aware_contrastive_loss(images, text, torch.tensor([0, 0]), scale)
    assert torch.allclose(two, one + math.log(2) / 2, atol=1e-6)
    per_sample_prompts = text[[0, 0]]
    arange_i2t = torch.nn.functional.cross_entropy(scale * images @ per_sample_prompts.T, torch.arange(2))
    assert arange_i2t >= math.log(2) - 1e-6
