"""Training: loss functions and loops."""

from mmcoa.train.objectives import class_aware_contrastive_loss

__all__ = ["class_aware_contrastive_loss"]
