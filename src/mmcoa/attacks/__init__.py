"""Attacks by name: ``build_attack("pgd", eps=4/255)``; ``ATTACKS.names()`` lists them. The
image-text retrieval threat models are registered apart, in ``RETRIEVAL_ATTACKS``
(:mod:`mmcoa.attacks.retrieval`)."""

from mmcoa.attacks import apgd, autoattack, bert, charmer, co_attack, multimodal, noise, sga  # noqa: F401  (register)
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
    """Each registered attack, classification then retrieval: its task, name, threat, one-line
    description (its docstring's first line) and default parameters."""
    rows = []
    for task, registry in (("classification", ATTACKS), ("retrieval", RETRIEVAL_ATTACKS)):
        for name in registry.names():
            cls = registry.get(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0]
            rows.append(
                {
                    "task": task,
                    "name": name,
                    "threat": cls.threat,
                    "description": summary,
                    "defaults": cls().params(),
                }
            )
    return rows
