"""MindEye's optimiser and learning-rate schedule as the reference training scripts build them.

MindEye1 (``Train_MindEye.py``) and MindEye2 (``Train.ipynb``) both use AdamW at ``max_lr`` 3e-4 with weight decay
1e-2 on every parameter whose name does not contain ``bias``, ``LayerNorm.bias`` or ``LayerNorm.weight`` (a
substring test: LayerNorms inside ``nn.Sequential`` are named ``...N.weight`` and so *are* decayed; only biases
are not), MindEye2's per-subject ridge adapters entirely decayed (their biases too), and torch's ``OneCycleLR`` with
``total_steps = int(epochs * steps_per_epoch)``, ``pct_start = 2 / epochs``, ``final_div_factor = 1000`` and the
rest at torch's defaults (``div_factor`` 25, cosine annealing, two phases, and beta1 of AdamW cycled between
0.95 and 0.85). /work/notes/mindeye-recipes.md has the citations.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn

MINDEYE_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
MINDEYE_MAX_LR = 3e-4
MINDEYE_WEIGHT_DECAY = 1e-2
MINDEYE_FINAL_DIV_FACTOR = 1000


def mindeye_no_decay(name: str) -> bool:
    """Whether MindEye leaves a parameter out of weight decay: its name contains one of ``MINDEYE_NO_DECAY``."""
    return any(nd in name for nd in MINDEYE_NO_DECAY)


def mindeye_param_groups(parts: Sequence[tuple[nn.Module, str]],
                         weight_decay: float = MINDEYE_WEIGHT_DECAY) -> list[dict]:
    """AdamW parameter groups in the reference's order. ``parts``: (module, mode) pairs, mode ``"split"`` (two
    groups: decayed, then the names :func:`mindeye_no_decay` excludes, at 0) or ``"all"`` (one decayed group, as
    MindEye2's ridge). MindEye1: ``[(prior.net, "split"), (voxel2clip, "split")]``; MindEye2: ``[(ridge, "all"),
    (backbone, "split"), (prior, "split")]``. Frozen parameters are kept, as the reference does."""
    groups = []
    for module, mode in parts:
        named = list(module.named_parameters())
        if mode == "all":
            groups.append({"params": [p for _, p in named], "weight_decay": weight_decay})
        elif mode == "split":
            groups.append({"params": [p for n, p in named if not mindeye_no_decay(n)], "weight_decay": weight_decay})
            groups.append({"params": [p for n, p in named if mindeye_no_decay(n)], "weight_decay": 0.0})
        else:
            raise ValueError(f"mode must be 'split' or 'all', not {mode!r}")
    return groups


def mindeye_optimizer(parts: Sequence[tuple[nn.Module, str]], max_lr: float = MINDEYE_MAX_LR,
                      weight_decay: float = MINDEYE_WEIGHT_DECAY) -> torch.optim.AdamW:
    """``AdamW(mindeye_param_groups(parts), lr=max_lr)`` (betas, eps at torch's defaults)."""
    return torch.optim.AdamW(mindeye_param_groups(parts, weight_decay), lr=max_lr)


def mindeye_onecycle(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
                     max_lr: float | Iterable[float] = MINDEYE_MAX_LR) -> torch.optim.lr_scheduler.OneCycleLR:
    """The reference's scheduler, stepped once per optimiser step: ``OneCycleLR(optimizer, max_lr,
    total_steps=int(epochs * steps_per_epoch), final_div_factor=1000, last_epoch=-1, pct_start=2 / epochs)``.

    MindEye1: steps_per_epoch = 8859 // 32 = 276, 240 epochs; MindEye2: steps_per_epoch = (750 * sessions) //
    batch (multi-subject: 30000 // 42 = 714), 150 epochs."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=int(epochs * steps_per_epoch),
                                               final_div_factor=MINDEYE_FINAL_DIV_FACTOR, last_epoch=-1,
                                               pct_start=2 / epochs)
