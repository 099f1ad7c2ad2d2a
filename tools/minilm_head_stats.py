"""Where the tied MiniLM head's top-10 candidates sit on its z-score scale: the measurement behind
the cut ``TIED_HEAD_MIN_Z`` (see ``src/mmcoa/attacks/text/mlm.py``).

For every word position of the texts below that BERT-Attack may attack (a single WordPiece, not
a filter word), the z-scores of the 10 best tokens other than the word itself, and how many of
them a cut at z would drop. The texts: the demo's caption templates filled with the Fashion-MNIST
and CIFAR-10 class names, and six everyday sentences.

    .venv/bin/python tools/minilm_head_stats.py
"""

from __future__ import annotations

import sys

import torch

from mmcoa.attacks.text.mlm import load_mlm
from mmcoa.attacks.text.stopwords import default_stop_words
from mmcoa.data.base import clean_classname
from mmcoa.data.fashion_mnist import CLASSNAMES
from mmcoa_demo.pretrain import CAPTION_TEMPLATES

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SENTENCES = (
    "A man is riding a horse on the beach",
    "Two children are playing football in the park",
    "The movie was surprisingly good and the actors were great",
    "A red car parked next to an old building",
    "She bought fresh vegetables at the market",
    "The weather today is cold and rainy",
)
CUTS = (2.0, 3.0, 3.5, 4.0, 4.5)


def candidate_z_scores(texts, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """[positions, k]: z-scores of the k best other tokens at each attackable one-piece word,
    and [positions, 2]: the mean and spread of the raw (unstandardized) scores there."""
    mlm, stop = load_mlm("minilm"), default_stop_words()
    rows, raw = [], []
    for text in texts:
        ids = torch.tensor([[mlm.tokenizer.cls_token_id, *mlm.pieces(text), mlm.tokenizer.sep_token_id]])
        mask = torch.ones_like(ids)
        scores = mlm.logits(ids, mask)[0]
        with torch.no_grad():
            encoder = mlm.model.encoder
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state[0]
            unscaled = hidden @ encoder.get_input_embeddings().weight.T
        for position, token in enumerate(mlm.tokenizer.convert_ids_to_tokens(ids[0].tolist())):
            if token.isalpha() and token.lower() not in stop:
                row = scores[position].clone()
                row[ids[0, position]] = -float("inf")  # the word itself is never a candidate
                rows.append(row.topk(k).values)
                raw.append(torch.stack([unscaled[position].mean(), unscaled[position].std()]))
    return torch.stack(rows), torch.stack(raw)


def main() -> int:
    names = [clean_classname(c) for c in (*CLASSNAMES, *CIFAR10)]  # as the datasets spell them
    texts = [t.format(c) for t in CAPTION_TEMPLATES for c in names] + list(SENTENCES)
    z, raw = candidate_z_scores(texts)
    tenth = z[:, -1]
    print(
        f"raw scores over the vocabulary: mean {raw[:, 0].mean():.2f}, spread (std) "
        f"{raw[:, 1].min():.2f} to {raw[:, 1].max():.2f}, {raw[:, 1].mean():.2f} on average"
    )
    print(
        f"{len(z)} word positions in {len(texts)} texts; z of the 10th candidate: min "
        f"{tenth.min():.2f}, median {tenth.median():.2f}; of the best: min {z[:, 0].min():.2f}"
    )
    for cut in CUTS:
        print(
            f"cut z >= {cut:g}: drops {(z < cut).float().mean():.1%} of the top-10 slots, "
            f"shortens {(tenth < cut).float().mean():.1%} of the lists"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
