"""Scores of decoded embeddings: every embedding metric of a split, and the test-time averaging curve."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from mindvis.evaluation.retrieval import cosine_similarity, embedding_correlation, embedding_cosine, embedding_report, top_k

from .decoders import decode


def score_split(dec: dict[str, np.ndarray], target: np.ndarray, ev: DictConfig, seed: int) -> dict:
    """Every embedding metric of decoded embeddings against the split's targets. Retrieval uses the contrastive
    head; correlation and cosine measure the regression head, the embedding a generator receives (for ridge the
    two are the same)."""
    tgt = torch.from_numpy(target)
    rep = embedding_report(torch.from_numpy(dec["contrastive"]), tgt, ev.mindeye_subset, ev.mindeye_draws, seed)
    reg = torch.from_numpy(dec["regression"])
    rep["embedding_correlation"]["value"] = embedding_correlation(reg, tgt)
    rep["embedding_cosine"]["value"] = embedding_cosine(reg, tgt)
    return rep


def averaging_curve(model, trials: np.ndarray, target: np.ndarray) -> list[dict]:
    """Test-time averaging: top-1/top-5 of the first r repetitions' mean fMRI ((N, R, V) trials), r = 1..R."""
    curve = []
    for r in range(1, trials.shape[1] + 1):
        pred = torch.from_numpy(decode(model, trials[:, :r].mean(1))["contrastive"])
        sim = cosine_similarity(pred, torch.from_numpy(target))
        curve.append({"repetitions": r, "top1": top_k(sim, 1), "top5": top_k(sim, 5), "chance": 1 / len(trials)})
    return curve
