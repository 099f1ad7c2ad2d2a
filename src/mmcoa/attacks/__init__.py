"""Attacks by name: ``build_attack("pgd", eps=4/255)``; ``ATTACKS.names()`` lists them. The
image-text retrieval threat models are registered apart, in ``RETRIEVAL_ATTACKS``
(:mod:`mmcoa.attacks.retrieval`)."""

from mmcoa.attacks import apgd, autoattack, bert, co_attack, multimodal, noise, sga  # noqa: F401  (register)
from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, build_attack, eval_mode
from mmcoa.attacks.pgd import PGD, maximize
from mmcoa.attacks.retrieval import RETRIEVAL_ATTACKS, build_retrieval_attack

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "PGD",
    "RETRIEVAL_ATTACKS",
    "build_attack",
    "build_retrieval_attack",
    "eval_mode",
    "maximize",
    "list_attacks",
]


def list_attacks() -> list[dict]:
    """Name, one-line description and default parameters of each registered attack."""
    rows = []
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        rows.append({"name": name, "description": summary, "defaults": cls().params()})
    return rows
