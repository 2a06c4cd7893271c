"""Metrics of decoded embeddings: retrieval, rank, correlation and identification, vectorised.

Rows of ``pred`` and ``target`` are aligned (row i of the decoded embeddings belongs to image i). Similarity
is the cosine. Chance levels are returned next to the scores (:func:`embedding_report`).

* top-k retrieval, brain -> image: image i is among the k candidates most similar to decoded row i;
  image -> brain: decoded row i is among the k rows most similar to image i. Ties count against.
* MindEye's protocol (:func:`published_retrieval`): top-1 image and brain retrieval among ``subset`` random items
  (300), over ``draws`` draws (30) from numpy's ``RandomState(42)``, as MindEye2's evaluation computes and labels them.
* relative median rank (Meta): the median over rows of (rank of the true image - 1) / (N - 1); 0 = perfect,
  0.5 = chance.
* embedding correlation: the mean over dimensions of Pearson r between decoded and true values across items;
  cosine: the mean over items of the cosine between decoded and true embedding.
* two-way identification: pair-wise identification of the Pearson correlation matrix (as the image metrics).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import identification, pairwise_pcc


def cosine_similarity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, M) cosine between every decoded row and every target."""
    return F.normalize(pred.double(), dim=-1) @ F.normalize(target.double(), dim=-1).T


def true_rank(sim: torch.Tensor) -> torch.Tensor:
    """(N,) rank of the diagonal entry within each row, 1 = best; ties ranked pessimistically."""
    own = sim.diagonal()[:, None]
    return (sim >= own).sum(1)


def top_k(sim: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose own column is within the top ``k``."""
    return float((true_rank(sim) <= k).double().mean())


def relative_median_rank(sim: torch.Tensor) -> float:
    n = sim.shape[1]
    return float(((true_rank(sim) - 1).double() / max(1, n - 1)).median())


def distractor_retrieval(pred: torch.Tensor, target: torch.Tensor, distractors: torch.Tensor) -> dict:
    """Each decoded row against its own target among every target and ``distractors`` (rows of ``target`` are the
    true items): top-1, top-5 and the relative median rank, with their chance. (Benchetrit et al.'s large set is
    another thing: held-out trials of the test concepts, see mindvis.align.scoring.large_set_scores.)"""
    sim = torch.cat([cosine_similarity(pred, target), cosine_similarity(pred, distractors)], 1)
    n = sim.shape[1]
    return {"top1": top_k(sim, 1), "top5": top_k(sim, 5), "median_rank": relative_median_rank(sim), "candidates": n,
            "chance": {"top1": 1 / n, "top5": min(1.0, 5 / n), "median_rank": 0.5}}


#: MindEye2's retrieval: ``draws`` draws of ``subset`` items, numpy's legacy global generator seeded with ``seed``
PUBLISHED_SUBSET, PUBLISHED_DRAWS, PUBLISHED_SEED = 300, 30, 42
Z95 = 1.959963984540054  # scipy.stats.norm.interval(0.95): mean +- Z95 * scale


def published_retrieval(pred: torch.Tensor, target: torch.Tensor, subset: int = PUBLISHED_SUBSET,
                        draws: int = PUBLISHED_DRAWS, seed: int = PUBLISHED_SEED) -> dict:
    """MindEye2's image and brain retrieval (``final_evaluations.ipynb``; MindEye1's Retrievals is the same per
    draw), as its code computes them and labelled as the papers label them.

    Each draw takes ``subset`` distinct items with ``numpy.random.RandomState(seed).choice(n, subset,
    replace=False)`` (draws in sequence from one generator: the notebook's ``np.random.seed(42)`` then
    ``np.random.choice``), and the cosine similarity of the flattened embeddings. **Image retrieval** (the code's
    "fwd", printed under "Given Brain embedding, find correct Image embedding") is, as computed, for each image the
    fraction whose most similar decoded (brain) embedding is its own; **brain retrieval** ("bwd") is for each
    decoded embedding whether its own image is the most similar. Top-1, ties counted against (the code's argsort
    leaves them unspecified). Reported: mean over draws, population std over draws, ``sem`` = std / sqrt(draws) and
    the 95 % interval mean +- 1.96 sem, as the notebook prints them; ``per_draw`` values."""
    if pred.shape != target.shape:
        raise ValueError(f"decoded embeddings {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
    n = len(pred)
    size = min(subset, n)
    rng = np.random.RandomState(seed)
    pred, target = pred.reshape(n, -1), target.reshape(n, -1)
    image, brain = [], []
    for _ in range(draws):
        idx = torch.from_numpy(rng.choice(np.arange(n), size=size, replace=False))
        sim = cosine_similarity(pred[idx], target[idx])  # row i: decoded i against every image
        image.append(top_k(sim.T, 1))
        brain.append(top_k(sim, 1))
    out = {}
    for name, values, how in (("image_retrieval", image, "for each image, its own decoded embedding is the most "
                                                          "similar (the code's fwd)"),
                              ("brain_retrieval", brain, "for each decoded embedding, its own image is the most "
                                                         "similar (the code's bwd)")):
        mean, std = float(np.mean(values)), float(np.std(values))
        sem = std / np.sqrt(draws)
        out[name] = {"mean": mean, "std": std, "sem": sem, "ci95": [mean - Z95 * sem, mean + Z95 * sem],
                     "per_draw": values, "chance": 1 / size, "subset": size, "draws": draws, "seed": seed,
                     "computed_as": how}
    return out


def embedding_correlation(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over dimensions of the Pearson r across items."""
    p, t = pred.double(), target.double()
    p, t = p - p.mean(0), t - t.mean(0)
    r = (p * t).sum(0) / (p.norm(dim=0) * t.norm(dim=0)).clamp_min(1e-12)
    return float(r.mean())


def embedding_cosine(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(F.cosine_similarity(pred.double(), target.double(), dim=-1).mean())


def embedding_report(pred: torch.Tensor, target: torch.Tensor, mindeye_subset: int = PUBLISHED_SUBSET,
                     draws: int = PUBLISHED_DRAWS, seed: int = PUBLISHED_SEED) -> dict:
    """Every embedding metric: ``{name: {"value", "chance"[, "std"]}}``."""
    if pred.shape != target.shape:
        raise ValueError(f"decoded embeddings {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
    n = len(pred)
    if n < 2:
        raise ValueError("embedding metrics need at least two items")
    sim = cosine_similarity(pred, target)
    out = {}
    for k in (1, 5):
        out[f"top{k}_brain_to_image"] = {"value": top_k(sim, k), "chance": min(1.0, k / n)}
        out[f"top{k}_image_to_brain"] = {"value": top_k(sim.T, k), "chance": min(1.0, k / n)}
    for name, r in published_retrieval(pred, target, mindeye_subset, draws, seed).items():  # MindEye's protocol
        out[name] = {"value": r["mean"], "std": r["std"], "ci95": r["ci95"], "chance": r["chance"],
                     "subset": r["subset"], "draws": draws, "seed": seed}
    out["relative_median_rank"] = {"value": relative_median_rank(sim), "chance": 0.5}
    out["embedding_correlation"] = {"value": embedding_correlation(pred, target), "chance": 0.0}
    out["embedding_cosine"] = {"value": embedding_cosine(pred, target), "chance": None}
    out["two_way_identification"] = {"value": float(identification(pairwise_pcc(pred, target)).mean()),
                                     "chance": 0.5}
    return out
