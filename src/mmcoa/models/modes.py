"""Training and eval modes of a model whose parts are not all trained.

``model.train()`` turns on every dropout layer, the frozen towers' too: a frozen text tower would
then give noisy class-prompt targets (TeCoA trains its image tower against them) and draw random
masks that nothing needs. :func:`train_unfrozen` puts only the parts that learn in training mode;
a part whose parameters are all frozen runs in eval mode (no dropout, fixed normalization
statistics) for the whole run, as its weights are fixed.
"""

from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

DROPOUT_ATTRIBUTES = ("dropout", "attention_dropout", "attn_drop", "drop_prob", "prob")


def outermost_modules(root: nn.Module, keep: Callable[[str, nn.Module], bool]) -> list[nn.Module]:
    """The submodules of ``root`` for which ``keep(name, module)`` holds, without those inside
    an earlier kept one (each part once, at its top)."""
    kept: list[tuple[str, nn.Module]] = []
    for name, sub in root.named_modules():
        inside = any(not outer or name.startswith(f"{outer}.") for outer, _ in kept)
        if not inside and keep(name, sub):
            kept.append((name, sub))
    return [sub for _, sub in kept]


def frozen_parts(module: nn.Module) -> list[nn.Module]:
    """The outermost submodules of ``module`` that hold parameters, none of them trainable."""
    return outermost_modules(module, lambda _, sub: _all_frozen(list(sub.parameters())))


def _all_frozen(params: list[nn.Parameter]) -> bool:
    return bool(params) and not any(p.requires_grad for p in params)


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
