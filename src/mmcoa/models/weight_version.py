"""The key that caches computed from a model's weights compare: :class:`WeightVersioned`.

Why: class-prompt embeddings (:class:`~mmcoa.models.ZeroShotClassifier`) and BERT-Attack's
edits (``attacks/bert.py``, ``attacks/text/bert_attack.py``) are reused across batches, attack
iterations and training steps, and must be dropped once the weights they came from change;
torch signals no such change, and a cache scoped by its callers (one pass, one step) would make
each caller remember it. :meth:`WeightVersioned.weights_key` joins (1) a process-wide token,
never reused (``id()`` of a freed model is), renewed by ``load_state_dict``, ``to``/``half``,
a copy or unpickling, a submodule or parameter set or removed (a prompt) and
:meth:`~WeightVersioned.mark_weights_changed`; (2) the optimizer steps taken in this process (a
global optimizer hook: fused optimizers leave ``Tensor._version`` alone); (3) the parameters'
``_version`` counters (any other in-place edit). Cost: a counter read per parameter at each
lookup, an increment per optimizer step; any optimizer step drops every model's caches (at most
one re-encoding per step). Weights replaced through ``.data`` need ``mark_weights_changed()``.
"""

from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["WeightVersioned"]

_TOKENS = itertools.count()  # process-wide: a token is never handed out twice
_OPTIMIZER_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


class WeightVersioned(nn.Module):
    """An ``nn.Module`` whose :meth:`weights_key` changes whenever its weights may have."""

    def __init__(self):
        super().__init__()
        self.mark_weights_changed()

    def mark_weights_changed(self) -> None:
        """Renew the module's token: every key given before no longer matches. Needed only
        after changing weights in a way the module docstring does not list."""
        self.__dict__["_weights_token"] = next(_TOKENS)

    def weights_key(self, parameters: Iterable[torch.Tensor]) -> tuple:
        """A hashable key, equal between two calls only if none of ``parameters`` (this
        module's) can have changed in between."""
        return (self._weights_token, _OPTIMIZER_STEPS[0], *(p._version for p in parameters))

    def load_state_dict(self, *args, **kwargs):
        result = super().load_state_dict(*args, **kwargs)
        self.mark_weights_changed()
        return result

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self.mark_weights_changed()
        return result

    def __setstate__(self, state):  # deepcopy and unpickling: a copy gets its own token
        super().__setstate__(state)
        self.mark_weights_changed()

    def __setattr__(self, name, value):  # a submodule or parameter set, replaced or removed
        slots = (self.__dict__.get("_modules", ()), self.__dict__.get("_parameters", ()))
        replaced = isinstance(value, (nn.Module, nn.Parameter)) or any(name in slot for slot in slots)
        super().__setattr__(name, value)
        if replaced:
            self.mark_weights_changed()
