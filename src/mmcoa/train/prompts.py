"""Learnable input prompts for parameter-efficient adversarial tuning."""

from __future__ import annotations

import torch
from torch import nn


class PaddingPrompt(nn.Module):
    """Visual prompting (Bahng et al. 2022): a learnable frame of width ``pad`` pixels added to
    the image border at the dataset's resolution; the model itself stays frozen."""

    def __init__(self, image_size: tuple[int, int], pad: int = 4):
        super().__init__()
        height, width = image_size
        mask = torch.ones(1, 1, height, width)
        mask[..., pad:height - pad, pad:width - pad] = 0
        self.register_buffer("mask", mask)
        self.prompt = nn.Parameter(torch.zeros(1, 3, height, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.mask * self.prompt
