"""Training: methods (registry), loss functions, configuration and the training loop."""

from mmcoa.train.config import TrainConfig, load_config
from mmcoa.train.methods import METHODS
from mmcoa.train.objectives import class_aware_contrastive_loss, mmcoa_loss
from mmcoa.train.trainer import train
import mmcoa.train.simclip  # noqa: F401  (registers simclip)
import mmcoa.train.tga_zsr  # noqa: F401  (registers tga-zsr, comp-tga)
import mmcoa.train.leaf  # noqa: F401  (registers leaf)

__all__ = ["METHODS", "TrainConfig", "class_aware_contrastive_loss", "load_config", "mmcoa_loss", "train"]
