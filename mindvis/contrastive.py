"""Losses that align decoded brain embeddings with image embeddings (CLIP, MindEye, Meta).

Every contrastive loss takes predictions and targets of the same shape (B, ...), flattens each item to a vector,
L2-normalises it, and compares every prediction with every target of the batch (logits (B, B) = cosine /
temperature). Token targets (B, 257, 768) are compared as one 257 x 768 vector per item, as MindEye does.

mindvis' own variants (what ``mindvis-align`` uses today):

* :func:`clip_loss`: symmetric InfoNCE (CLIP); the temperature is a number or a learnable :class:`Temperature`.
* :func:`mixco` + :func:`bimixco_loss`: BiMixCo whose soft target *adds* ``1 - beta`` to the partner's entry, so a
  row whose partner is itself keeps a total weight of 1 on its own image.
* :func:`soft_clip_loss` at a fixed temperature (0.125); :func:`mindeye_schedule` switches at a fraction of the
  epochs (``epoch / epochs < 1/3``).
* :func:`mse_loss`: regression on the raw (unnormalised) embedding, as Meta's MSE head.

MindEye's losses exactly as MedARC-AI's reference code computes them (/work/notes/mindeye-recipes.md has the
citations; tests/test_mindeye_losses.py compares them with outputs of the reference functions):

* :func:`mindeye_bimixco_loss`: the soft target *assigns* ``1 - beta`` to the partner's entry
  (``probs[i, perm[i]] = 1 - beta[i]`` over ``diag(beta)``): a mixed row whose partner is itself gets ``1 - beta``
  on its own image instead of 1, and an unmixed row (beta = 1) whose partner is itself gets an all-zero target
  row (it adds nothing to the loss). Temperature 0.006, both directions.
* :func:`soft_clip_loss` with the temperature of :func:`softclip_temperatures` (cosine from 0.004 to 0.0075
  over the SoftCLIP epochs); :func:`mindeye_contrastive_at` says which loss and temperature an epoch uses
  (BiMixCo while ``epoch < int(0.33 * epochs)``).
* :func:`mixco_subjects`: multi-subject BiMixCo (each subject's rows mixed within the subject, partners indexed
  into the concatenated batch); ``reference_bug=True`` reproduces MindEye2, whose concatenated partners lack the
  subject offsets.
* :func:`mindeye2_blurry_contrastive_loss`: MindEye2's soft contrastive term of the low-level branch
  (temperature 0.2), and :func:`mindeye2_total_loss` its weighting of all terms.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# MindEye's reference defaults (MindEye1 Train_MindEye.py and MindEye2 Train.ipynb; see the facts sheet).
MINDEYE_MIX_BETA = 0.15  # mixco: beta ~ Beta(0.15, 0.15)
MINDEYE_MIX_SELECT_P = 0.5  # mixco: a row is mixed where torch.rand() <= 0.5
MINDEYE_BIMIXCO_TEMPERATURE = 0.006
MINDEYE_MIXUP_PCT = 0.33  # BiMixCo while epoch < int(0.33 * epochs), SoftCLIP after
MINDEYE_SOFTCLIP_START, MINDEYE_SOFTCLIP_END = 0.004, 0.0075
MINDEYE_PRIOR_SCALE = 30.0  # both: loss += 30 * prior loss
MINDEYE2_CLIP_SCALE = 1.0
MINDEYE2_BLUR_SCALE = 0.5  # MindEye2: loss += 0.5 * (L1 on the blurry latents + 0.1 * their contrastive term)
MINDEYE2_BLURRY_CONTRASTIVE_WEIGHT = 0.1
MINDEYE2_BLURRY_TEMPERATURE = 0.2


class Temperature(nn.Module):
    """A learnable softmax temperature kept as log(1 / T), as CLIP; clamped to 1 / T <= 100."""

    def __init__(self, init: float = 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    def forward(self) -> torch.Tensor:
        return 1.0 / self.log_scale.clamp(max=math.log(100.0)).exp()


def _flat_normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=-1)


def _logits(preds: torch.Tensor, targets: torch.Tensor, temperature) -> torch.Tensor:
    if preds.shape != targets.shape or preds.ndim < 2:
        raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} must both be (B, ...)")
    return _flat_normalized(preds) @ _flat_normalized(targets).T / temperature  # (B, B)


def _soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    return -(logits.log_softmax(-1) * probs).sum(-1).mean()


def clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature=0.07) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of brain -> image and image -> brain cross-entropies with the diagonal."""
    logits = _logits(preds, targets, temperature)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def mixco(voxels: torch.Tensor, beta: float = MINDEYE_MIX_BETA, select_p: float = MINDEYE_MIX_SELECT_P,
          perm: torch.Tensor | None = None, betas: torch.Tensor | None = None,
          selected: torch.Tensor | None = None):
    """Mix a random subset of the batch with shuffled partners, as MindEye's ``mixco``.

    Draws from torch's global generator in the reference's order (``randperm(B)``, ``Beta(beta, beta)`` x B,
    ``rand(B) <= select_p``); ``perm``, ``betas`` and ``selected`` given replace the draws. Returns (mixed voxels,
    perm, betas, selected): row i of the output is ``betas[i] * x[i] + (1 - betas[i]) * x[perm[i]]`` where
    ``selected[i]``, else ``x[i]`` (with ``betas[i] = 1``); betas take the voxels' dtype (float16 voxels give
    float16 betas, as in MindEye2). The input is not modified (the reference mixes in place).
    """
    n = voxels.shape[0]
    if perm is None:
        perm = torch.randperm(n)
    if betas is None:
        betas = torch.distributions.Beta(beta, beta).sample((n,))
    if selected is None:
        selected = torch.rand(n) <= select_p
    perm, selected = perm.to(voxels.device), selected.to(voxels.device)
    betas = betas.to(voxels.device, voxels.dtype)
    betas = torch.where(selected, betas, torch.ones_like(betas))
    shape = [-1] + [1] * (voxels.ndim - 1)
    mixed = voxels * betas.view(shape) + voxels[perm] * (1 - betas).view(shape)
    return mixed, perm, betas, selected


def bimixco_targets(perm: torch.Tensor, betas: torch.Tensor, partner: str = "assign") -> torch.Tensor:
    """The (B, B) soft targets of BiMixCo: ``betas`` on the diagonal and ``1 - betas`` at (i, perm[i]).

    ``partner="assign"`` writes ``1 - betas[i]`` over entry (i, perm[i]) as MindEye does (where perm[i] == i the
    diagonal becomes ``1 - betas[i]``); ``partner="add"`` adds it (the diagonal becomes 1), mindvis' variant.
    """
    if partner not in ("assign", "add"):
        raise ValueError(f"partner must be 'assign' or 'add', not {partner!r}")
    probs = torch.diag(betas)
    rows = torch.arange(len(betas), device=betas.device)
    if partner == "assign":
        probs[rows, perm.to(betas.device)] = 1 - betas
    else:
        probs[rows, perm.to(betas.device)] += 1 - betas
    return probs


def bimixco_loss(preds: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, betas: torch.Tensor,
                 temperature=MINDEYE_BIMIXCO_TEMPERATURE) -> torch.Tensor:
    """mindvis' BiMixCo: soft targets ``betas`` on the diagonal plus ``1 - betas`` *added* at each row's partner.

    Differs from MindEye (:func:`mindeye_bimixco_loss`) only for rows whose partner is themselves.
    """
    logits = _logits(preds, targets, temperature)
    probs = bimixco_targets(perm, betas.to(logits.dtype), partner="add")
    return (_soft_cross_entropy(logits, probs) + _soft_cross_entropy(logits.T, probs.T)) / 2


def mindeye_bimixco_loss(preds: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor | None = None,
                         betas: torch.Tensor | None = None, temperature=MINDEYE_BIMIXCO_TEMPERATURE,
                         bidirectional: bool = True) -> torch.Tensor:
    """MindEye's BiMixCo (its ``mixco_nce``) exactly: ``probs = diag(betas)``, then ``probs[i, perm[i]] = 1 -
    betas[i]`` (assigned), cross-entropy of the brain -> image logits against ``probs`` and, bidirectional, of the
    image -> brain logits against ``probs.T``, averaged. Without ``perm``/``betas``: the symmetric InfoNCE with the
    diagonal (what MindEye logs on validation during the BiMixCo epochs). Inputs (B, ...) are flattened and
    L2-normalised as MindEye's training loop does before the call.
    """
    logits = _logits(preds, targets, temperature)
    if perm is None or betas is None:
        labels = torch.arange(len(logits), device=logits.device)
        loss = F.cross_entropy(logits, labels)
        return (loss + F.cross_entropy(logits.T, labels)) / 2 if bidirectional else loss
    probs = bimixco_targets(perm, betas.to(logits.device), partner="assign")
    loss = _soft_cross_entropy(logits, probs)
    return (loss + _soft_cross_entropy(logits.T, probs.T)) / 2 if bidirectional else loss


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature=0.125) -> torch.Tensor:
    """SoftCLIP (MindEye's ``soft_clip_loss``): cross-entropy against the softmax of image-image similarities, in
    both directions. MindEye trains it at the temperatures of :func:`softclip_temperatures`, not at this default."""
    logits = _logits(preds, targets, temperature)
    soft = _logits(targets, targets, temperature).softmax(-1)
    return (_soft_cross_entropy(logits, soft) + _soft_cross_entropy(logits.T, soft)) / 2


def mse_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(preds, targets)


def mindeye_schedule(progress: float, mixup_fraction: float = 1 / 3) -> str:
    """mindvis' switch (``progress`` = epoch / epochs in [0, 1)): 'bimixco' first, then 'softclip'.

    MindEye switches at ``int(0.33 * epochs)`` instead: :func:`mindeye_contrastive_at`."""
    return "bimixco" if progress < mixup_fraction else "softclip"


# ---- MindEye's schedules ----

def mindeye_bimixco_epochs(epochs: int, mixup_pct: float = MINDEYE_MIXUP_PCT) -> int:
    """How many first epochs train with BiMixCo: ``int(mixup_pct * epochs)`` (79 of 240, 49 of 150)."""
    return int(mixup_pct * epochs)


def softclip_temperatures(epochs: int, mixup_pct: float = MINDEYE_MIXUP_PCT, start: float = MINDEYE_SOFTCLIP_START,
                          end: float = MINDEYE_SOFTCLIP_END) -> torch.Tensor:
    """SoftCLIP's temperature for each SoftCLIP epoch (float32, as MindEye's ``cosine_anneal``): with
    n = epochs - int(mixup_pct * epochs), ``end + (start - end) / 2 * (1 + cos(pi * k / (n - 1)))`` for k = 0..n-1,
    so it rises from ``start`` (0.004) to ``end`` (0.0075). Epoch e >= int(mixup_pct * epochs) uses entry
    ``e - int(mixup_pct * epochs)``. n = 1 gives NaN in the reference (0 / 0); here ``[start]``."""
    n = epochs - mindeye_bimixco_epochs(epochs, mixup_pct)
    if n <= 0:
        return torch.zeros(0)
    if n == 1:
        return torch.tensor([start])
    return end + (start - end) / 2 * (1 + torch.cos(torch.pi * torch.arange(n) / (n - 1)))


def mindeye_contrastive_at(epoch: int, epochs: int, mixup_pct: float = MINDEYE_MIXUP_PCT,
                           temperatures: torch.Tensor | None = None) -> tuple[str, float]:
    """MindEye's contrastive loss of a (0-based) epoch: ('bimixco', 0.006) while ``epoch < int(mixup_pct *
    epochs)``, else ('softclip', its :func:`softclip_temperatures` entry)."""
    switch = mindeye_bimixco_epochs(epochs, mixup_pct)
    if epoch < switch:
        return "bimixco", MINDEYE_BIMIXCO_TEMPERATURE
    temps = softclip_temperatures(epochs, mixup_pct) if temperatures is None else temperatures
    return "softclip", float(temps[epoch - switch])


# ---- multi-subject BiMixCo (MindEye2) ----

def subject_partners(perms: list[torch.Tensor], reference_bug: bool = False) -> torch.Tensor:
    """One partner index per row of the concatenated multi-subject batch from each subject's own permutation.

    Subject s's rows start at the total size of the subjects before it; its partners are ``perm_s + offset_s``.
    ``reference_bug=True`` concatenates the permutations without the offsets, as MindEye2's Train.ipynb does, so
    the partners of every subject after the first index rows of the first subject in the soft targets."""
    if reference_bug:
        return torch.cat(list(perms))
    out, offset = [], 0
    for p in perms:
        out.append(p + offset)
        offset += len(p)
    return torch.cat(out)


def mixco_subjects(voxels: list[torch.Tensor], beta: float = MINDEYE_MIX_BETA,
                   select_p: float = MINDEYE_MIX_SELECT_P, reference_bug: bool = False):
    """MindEye2's multi-subject BiMixCo: each subject's rows are mixed within that subject (:func:`mixco` per
    subject, in order), and the per-row partners, betas and selections are concatenated in subject order.

    Returns (mixed voxels per subject, perm (sum B_s,), betas, selected) for :func:`mindeye_bimixco_loss` on the
    concatenated batch. By default the partners point at the right rows; ``reference_bug=True`` gives MindEye2's
    (:func:`subject_partners`): the voxels are still mixed within the subject, but the soft targets of every
    subject after the first put ``1 - beta`` on a row of the first subject.
    """
    outs = [mixco(v, beta, select_p) for v in voxels]
    perm = subject_partners([o[1] for o in outs], reference_bug)
    return ([o[0] for o in outs], perm, torch.cat([o[2] for o in outs]), torch.cat([o[3] for o in outs]))


# ---- MindEye2's low-level branch and loss weighting ----

def mindeye2_blurry_contrastive_loss(student: torch.Tensor, teacher: torch.Tensor, teacher_aug: torch.Tensor,
                                     temperature: float = MINDEYE2_BLURRY_TEMPERATURE) -> torch.Tensor:
    """MindEye2's soft contrastive term of the low-level branch (its ``soft_cont_loss``): the brain's feature maps
    (B, 49, 512) against ConvNeXt features of the image (teacher) and of an augmented copy (teacher_aug), each
    reshaped to (B * 49, 512) rows and L2-normalised; soft targets are the teacher-to-augmented similarities."""
    s, t, ta = (F.normalize(x.reshape(-1, x.shape[-1]), dim=-1) for x in (student, teacher, teacher_aug))
    teacher_teacher_aug = t @ ta.T / temperature
    teacher_teacher_aug_t = ta @ t.T / temperature
    student_teacher_aug = s @ ta.T / temperature
    student_teacher_aug_t = ta @ s.T / temperature
    loss1 = _soft_cross_entropy(student_teacher_aug, teacher_teacher_aug.softmax(-1))
    loss2 = _soft_cross_entropy(student_teacher_aug_t, teacher_teacher_aug_t.softmax(-1))
    return (loss1 + loss2) / 2


def mindeye2_total_loss(prior: torch.Tensor | float = 0.0, clip: torch.Tensor | float = 0.0,
                        blurry_l1: torch.Tensor | float | None = None,
                        blurry_contrastive: torch.Tensor | float | None = None,
                        prior_scale: float = MINDEYE_PRIOR_SCALE, clip_scale: float = MINDEYE2_CLIP_SCALE,
                        blur_scale: float = MINDEYE2_BLUR_SCALE):
    """MindEye2's training loss: ``prior_scale * prior + clip_scale * clip + blur_scale * (blurry_l1 + 0.1 *
    blurry_contrastive)`` (the blurry term only with the low-level branch). MindEye1's is ``clip + 30 * prior``
    (this with the defaults and no blurry term)."""
    loss = prior_scale * prior + clip_scale * clip
    if blurry_l1 is not None:
        cont = 0.0 if blurry_contrastive is None else blurry_contrastive
        loss = loss + (blurry_l1 + MINDEYE2_BLURRY_CONTRASTIVE_WEIGHT * cont) * blur_scale
    return loss
