"""mmcoa: attack, robustify and evaluate CLIP-style vision-language models (MMCoA, Eq. 1-9).

Entry points: :func:`load_model`, :func:`load_dataset`, :func:`build_attack`, :func:`evaluate`.
"""

__version__ = "0.1.0"

from mmcoa.attacks import build_attack
from mmcoa.data import load_dataset
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.models import ZeroShotClassifier, load_model

__all__ = [
    "MmcoaError",
    "ZeroShotClassifier",
    "build_attack",
    "evaluate",
    "load_dataset",
    "load_model",
    "__version__",
]
