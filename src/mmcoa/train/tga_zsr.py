"""TGA-ZSR (``tga-zsr``) and Comp-TGA (``comp-tga``): TeCoA plus text-guided attention alignment.

TGA-ZSR (Yu, Zhang & Xu, "Text-Guided Attention is All You Need for Zero-Shot Robustness in
Vision-Language Models", NeurIPS 2024) and Comp-TGA ("Complementary Text-Guided Attention for
Zero-Shot Adversarial Robustness", TPAMI 2026), from the papers and the authors' ``TGA-ZSR.py``,
``Comp-TGA.py`` and ``attention_map.py``:

- **Text-guided attention** ``A(x, t)`` (:func:`text_guided_attention`): the similarity of the
  class text embedding ``t`` with each projected patch token of the image tower's last layer,
  min-max normalized over the patches and upsampled (bilinear) to the model's input size.
- **Comp-TGA's complementary attention** (:func:`complementary_attention`):
  ``A(x, t_c) · (1 − A(x, t_n))`` with the non-class prompt ``t_n`` = "This is not a photo of a
  {class}" (:data:`NON_CLASS_TEMPLATE`, ``Comp-TGA.py``'s).
- **Loss** (:func:`tga_zsr_loss`): ``CE(s · cos(f(x_adv), g(t_c)), y)`` (TeCoA's, ``x_adv`` =
  training PGD against the class prompts) ``+ α · mean_i ‖A_θ(x_adv,i) − A_θ₀(x_i)‖₂``
  (local attention refinement: L_AR, NeurIPS Eq. 6; L_LARM, TPAMI Eq. 9) ``+ β · mean_i
  ‖A_θ(x_i) − A_θ₀(x_i)‖₂`` (global attention constraint: L_AMC, NeurIPS Eq. 7; L_GACM, TPAMI
  Eq. 12), ``θ`` the tuned model, ``θ₀`` the frozen original, the L2 norm over each image's
  whole upsampled map. α, β: TGA-ZSR 0.08, 0.05; Comp-TGA 0.10, 0.07 (the scripts' defaults).

The guiding text embeddings are the tuned model's for all three maps, without gradient and
with the text tower in eval mode (the published loop computes them under ``no_grad`` with the
text tower never put in train mode), so a trained text tower's dropout does not reach them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import eval_mode
from mmcoa.errors import MmcoaError
from mmcoa.train.methods import (
    METHODS,
    NO_LEAK,
    TECOA_DEFAULTS,
    StepContext,
    WithFrozenTeacher,
    feature_logits,
    train_pgd,
    with_leak,
)

NON_CLASS_TEMPLATE = "This is not a photo of a {}"  # Comp-TGA.py's non-class prompts
# Both scripts' defaults (main.sh runs them without flags): SGD momentum 0.9, lr 1e-4, no weight
# decay, cosine with 1000 warm-up steps, PGD eps 1/255, 2 steps of 1/255 (their TeCoA: lr 1e-5).
TGA_DEFAULTS = {**TECOA_DEFAULTS, "lr": 1e-4}


def patch_grid(n_patches: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (rows, columns) of ``n_patches`` patch tokens on an input of ``image_size`` (square
    patches); a one-line error when they do not tile it."""
    height, width = image_size
    rows = round(math.sqrt(n_patches * height / width))
    if rows < 1 or n_patches % rows:
        raise MmcoaError(f"{n_patches} patch tokens do not form a grid on a {height}x{width} input")
    return rows, n_patches // rows


def text_guided_attention(patches: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TGA-ZSR's text-guided attention map ``A(x, t)`` [B, H, W] from patch tokens [B, P, D] in
    the joint space and one text embedding per image [B, D]: ``s_p = cos(z_p, t)`` per patch,
    ``(s − min_p s) / (max_p s − min_p s)`` per image, on the patch grid, bilinearly upsampled to
    ``size`` (``align_corners=False``). Computed in float32, under autocast too (a product and
    a sum, which autocast leaves in float32; a matmul would run in bf16)."""
    unit_text = F.normalize(text.float(), dim=-1)
    similarity = (F.normalize(patches.float(), dim=-1) * unit_text[:, None]).sum(-1)
    low, high = similarity.aminmax(dim=1, keepdim=True)
    scaled = (similarity - low) / (high - low).clamp_min(torch.finfo(similarity.dtype).tiny)
    grid = scaled.view(len(scaled), 1, *patch_grid(scaled.shape[1], size))
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]


def complementary_attention(
    patches: torch.Tensor, class_text: torch.Tensor, non_class_text: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Comp-TGA's map ``A(x, t_c) · (1 − A(x, t_n))``: the class prompt's attention times the
    reversed attention of the non-class prompt (both :func:`text_guided_attention`)."""
    return text_guided_attention(patches, class_text, size) * (
        1 - text_guided_attention(patches, non_class_text, size)
    )


def attention_distance(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i ‖maps_i − targets_i‖₂``, the L2 norm over each image's whole map (the published
    ``Distance_metric l2``)."""
    return (maps - targets).flatten(1).norm(dim=1).mean()


def guide_embeddings(model, prompts: list[str]) -> torch.Tensor:
    """``prompts``' text embeddings [C, D] guiding the maps: no gradient, eval mode."""
    with torch.no_grad(), eval_mode(model):
        return model.encode_text(prompts)


def tga_zsr_loss(
    adv_logits: torch.Tensor,
    labels: torch.Tensor,
    adv_maps: torch.Tensor,
    clean_maps: torch.Tensor,
    original_maps: torch.Tensor,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TGA-ZSR's total loss ``CE(adv_logits, y) + α · d(A_θ(x_adv), A_θ₀(x)) + β · d(A_θ(x),
    A_θ₀(x))`` (NeurIPS Eq. 6-7, TPAMI Eq. 9 and 12; ``d``: :func:`attention_distance`). The
    terms are logged unweighted."""
    ce = F.cross_entropy(adv_logits, labels)
    refinement = attention_distance(adv_maps, original_maps)
    constraint = attention_distance(clean_maps, original_maps)
    terms = {
        "image_adv": ce.detach(),
        "attention_adv": refinement.detach(),
        "attention_clean": constraint.detach(),
    }
    return ce + alpha * refinement + beta * constraint, terms


@METHODS.register("tga-zsr")
class TGAZSR(WithFrozenTeacher):
    """TGA-ZSR, text-guided attention: TeCoA's loss plus attention maps aligned with the original model's.

    TGA-ZSR (Yu et al., NeurIPS 2024): CE on PGD images (TeCoA's) + α ‖A_θ(x_adv) − A_θ₀(x)‖ +
    β ‖A_θ(x) − A_θ₀(x)‖, A the class prompt's text-guided attention over the image patches,
    θ₀ the frozen original (:func:`tga_zsr_loss`; α 0.08, β 0.05); image tower. Settings: its
    script's defaults (SGD momentum 0.9, lr 1e-4, no weight decay, cosine with 1000 warm-up
    steps, PGD eps 1/255, 2 steps of 1/255). Needs a ViT image tower (patch tokens)."""

    defaults = TGA_DEFAULTS
    published = NO_LEAK
    default_towers = ("image",)
    alpha = 0.08  # local attention refinement (adversarial image vs the original's clean map)
    beta = 0.05  # global attention constraint (clean image vs the original's clean map)

    def setup(self, model, image_size, towers, config):
        model.check_image_tokens()  # before the frozen copy: a one-line error, no work done
        super().setup(model, image_size, towers, config)

    def guidance(self, ctx: StepContext) -> tuple[torch.Tensor, ...]:
        """The class prompts' embeddings [C, D] by the tuned model (see the module docstring)."""
        return (guide_embeddings(ctx.model, ctx.prompts),)

    def attention(self, patches, guides, labels, size) -> torch.Tensor:
        """Each image's map under its own class prompt (:func:`text_guided_attention`)."""
        (class_text,) = guides
        return text_guided_attention(patches, class_text[labels], size)

    def loss(self, ctx, images, labels):
        model = ctx.model
        adversarial, leak = train_pgd(ctx, images, labels)
        adv_features, adv_patches = model.encode_image_tokens(adversarial)
        _, clean_patches = model.encode_image_tokens(images)
        with torch.no_grad():
            _, original_patches = self.frozen.encode_image_tokens(images)
        guides = self.guidance(ctx)
        adv_map, clean_map, original_map = (
            self.attention(patches, guides, labels, model.image_size)
            for patches in (adv_patches, clean_patches, original_patches)
        )
        logits = feature_logits(model, ctx.prompts)(adv_features)
        loss, terms = tga_zsr_loss(logits, labels, adv_map, clean_map, original_map, self.alpha, self.beta)
        return with_leak(loss, terms, leak)


@METHODS.register("comp-tga")
class CompTGA(TGAZSR):
    """Comp-TGA, complementary text-guided attention: TGA-ZSR with non-class prompts' reversed attention.

    Comp-TGA (Yu et al., TPAMI 2026): TGA-ZSR's loss with each map A(x, t_c) · (1 − A(x, t_n)),
    t_n the non-class prompt "This is not a photo of a {class}" (:func:`complementary_attention`;
    α 0.10, β 0.07); image tower; TGA-ZSR's settings (its script's defaults)."""

    alpha = 0.10
    beta = 0.07

    def prepare(self, model, dataset, indices, config):
        """The non-class prompts of the dataset's classes (:data:`NON_CLASS_TEMPLATE`)."""
        self.non_class_prompts = dataset.prompts(NON_CLASS_TEMPLATE)

    def guidance(self, ctx):
        """The class and the non-class prompts' embeddings [C, D] each (as TGA-ZSR's)."""
        return guide_embeddings(ctx.model, ctx.prompts), guide_embeddings(ctx.model, self.non_class_prompts)

    def attention(self, patches, guides, labels, size):
        class_text, non_class_text = guides
        return complementary_attention(patches, class_text[labels], non_class_text[labels], size)
