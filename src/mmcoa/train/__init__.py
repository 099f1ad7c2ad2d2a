"""Training: methods (registry), loss functions, configuration and the training loop."""

from mmcoa.train.config import TrainConfig, load_config
from mmcoa.train.methods import METHODS
from mmcoa.train.objectives import class_aware_contrastive_loss, mmcoa_loss
from mmcoa.train.trainer import train

__all__ = ["METHODS", "TrainConfig", "class_aware_contrastive_loss", "load_config", "mmcoa_loss", "train"]
