"""Training and eval modes of a model whose parts are not all trained.

``model.train()`` turns on every dropout layer, the frozen towers' too: a frozen text tower would
then give noisy class-prompt targets (TeCoA trains its image tower against them) and draw random
masks that nothing needs. :func:`train_unfrozen` puts only the parts that learn in training mode;
a part whose parameters are all frozen runs in eval mode (no dropout, fixed normalization
statistics) for the whole run, as its weights are fixed.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

DROPOUT_ATTRIBUTES = ("dropout", "attention_dropout", "attn_drop", "drop_prob", "prob")


def frozen_parts(module: nn.Module) -> list[nn.Module]:
    """The outermost submodules of ``module`` that hold parameters, none of them trainable."""
    found: list[str] = []
    parts = []
    for name, sub in module.named_modules():
        if any(name.startswith(f"{outer}.") for outer in found if outer):
            continue
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(name)
            parts.append(sub)
    return parts


def train_unfrozen(module: nn.Module, frozen: Iterable[nn.Module] | None = None) -> None:
    """Training mode for the parts of ``module`` that learn, eval mode for ``frozen`` (default:
    :func:`frozen_parts`, which a training loop computes once: what is trainable does not change
    during a run)."""
    module.train()
    for part in frozen_parts(module) if frozen is None else frozen:
        part.eval()


def is_dropout(module: nn.Module) -> bool:
    """Whether ``module`` draws random masks in training mode: a ``torch.nn`` dropout layer with
    p > 0, or a layer that keeps its dropout rate as a number (transformers' CLIP attention
    ``dropout``, open_clip's ``PatchDropout.prob``...)."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    return any(
        isinstance(value, float) and value > 0
        for key, value in vars(module).items()
        if key in DROPOUT_ATTRIBUTES
    )


def active_dropout(modules: Iterable[nn.Module]) -> bool:
    """Whether any of ``modules`` (each with its submodules) draws dropout masks in its current
    mode."""
    return any(is_dropout(sub) and sub.training for module in modules for sub in module.modules())
