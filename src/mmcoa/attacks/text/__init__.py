"""Text attacks: BERT-Attack (Li et al. 2020) as MMCoA uses it (paper Eq. 4).

``BertAttack(load_mlm("bert-base-uncased")).attack_embeddings(prompts, model)`` returns one
:class:`TextEdit` per prompt, maximizing the KL divergence between the softmax of the original
and the perturbed L2-normalized text embeddings.
"""

from mmcoa.attacks.text.bert_attack import BertAttack, ScoreFn, TextEdit, kl_divergence_score
from mmcoa.attacks.text.mlm import MaskedLM, load_mlm
from mmcoa.attacks.text.stopwords import default_stop_words

__all__ = [
    "BertAttack",
    "MaskedLM",
    "ScoreFn",
    "TextEdit",
    "default_stop_words",
    "kl_divergence_score",
    "load_mlm",
]
