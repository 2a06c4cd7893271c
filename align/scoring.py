"""Scores of decoded embeddings: every embedding metric of a split, the test-time averaging curve, retrieval among
the gallery's distractors and Benchetrit et al.'s large retrieval set.

With several subjects (M/EEG) every score is computed per subject (a subject's test images ranked among its own:
the same image seen by two subjects is two rows with one target) and averaged over the subjects; the per-subject
values are kept under ``by_subject``.
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from mindvis.evaluation.retrieval import (cosine_similarity, distractor_retrieval, embedding_correlation,
                                          embedding_cosine, embedding_report, top_k)

from .decoders import decode


def subject_groups(subjects) -> list[np.ndarray]:
    """Row indices of each subject, in the order of their names (one group for data without several subjects)."""
    subjects = np.asarray(list(subjects) if subjects is not None else [], dtype=str)
    names = sorted(set(subjects.tolist()))
    if len(names) <= 1:
        return [np.arange(len(subjects))]
    return [np.flatnonzero(subjects == s) for s in names]


def _number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def _mean_over_subjects(reports: list[dict], names: list[str]) -> dict:
    """{metric: {"value", "chance", ...}} averaged over subjects (the numbers; others from the first subject), with
    each subject's value under by_subject."""
    if len(reports) == 1:
        return reports[0]
    out = {}
    for metric in reports[0]:
        rows = [r[metric] for r in reports]
        out[metric] = {k: float(np.mean([r[k] for r in rows])) if all(_number(r[k]) for r in rows) else rows[0][k]
                       for k in rows[0]}
        out[metric]["by_subject"] = {n: r["value"] for n, r in zip(names, rows)}
    return out


def score_split(dec: dict[str, np.ndarray], target: np.ndarray, ev: DictConfig, seed: int, subjects=None) -> dict:
    """Every embedding metric of decoded embeddings against the split's targets. Retrieval uses the contrastive
    head; correlation and cosine measure the regression head, the embedding a generator receives (for ridge the
    two are the same). Several subjects: per subject, then the mean."""
    reports, groups = [], subject_groups(subjects if subjects is not None else [""] * len(target))
    for idx in groups:
        tgt = torch.from_numpy(target[idx])
        rep = embedding_report(torch.from_numpy(dec["contrastive"][idx]), tgt, ev.mindeye_subset, ev.mindeye_draws,
                               seed)
        reg = torch.from_numpy(dec["regression"][idx])
        rep["embedding_correlation"]["value"] = embedding_correlation(reg, tgt)
        rep["embedding_cosine"]["value"] = embedding_cosine(reg, tgt)
        reports.append(rep)
    return _mean_over_subjects(reports, sorted(set(subjects)) if subjects is not None else [""])


def averaging_curve(model, trials: np.ndarray, target: np.ndarray, subjects=None) -> list[dict]:
    """Test-time averaging: top-1/top-5 of the first r repetitions' mean fMRI ((N, R, V) trials), r = 1..R; several
    subjects: per subject, then the mean."""
    curve = []
    groups = subject_groups(subjects if subjects is not None else [""] * len(trials))
    for r in range(1, trials.shape[1] + 1):
        pred = torch.from_numpy(decode(model, trials[:, :r].mean(1), subjects=subjects)["contrastive"])
        rows = []
        for idx in groups:
            sim = cosine_similarity(pred[idx], torch.from_numpy(target[idx]))
            rows.append((top_k(sim, 1), top_k(sim, 5), 1 / len(idx)))
        top1, top5, chance = (float(np.mean(v)) for v in zip(*rows))
        curve.append({"repetitions": r, "top1": top1, "top5": top5, "chance": chance})
    return curve


def gallery_scores(pred: np.ndarray, target: np.ndarray, gallery: np.ndarray, subjects=None) -> dict:
    """Test images retrieved among the test images plus the gallery's images as distractors (the gallery: the
    training images, or ``eval.gallery``): ``top1_with_gallery`` ... with chance. Not the paper's large set."""
    rows, names = [], sorted(set(subjects)) if subjects is not None else [""]
    for idx in subject_groups(subjects if subjects is not None else [""] * len(pred)):
        r = distractor_retrieval(torch.from_numpy(pred[idx]), torch.from_numpy(target[idx]), torch.from_numpy(gallery))
        rows.append({f"{m}_with_gallery": {"value": r[m], "chance": r["chance"][m], "candidates": r["candidates"]}
                     for m in ("top1", "top5")} | {"relative_median_rank_with_gallery": {
                         "value": r["median_rank"], "chance": r["chance"]["median_rank"], "candidates": r["candidates"]}})
    return _mean_over_subjects(rows, names)


def large_set_scores(pred: np.ndarray, ids: list[str], emb: np.ndarray, subjects=None) -> dict:
    """Benchetrit et al.'s large set: each held-out trial (a training-image trial of a test concept, never trained
    on) ranked among all of its subject's held-out images: top-1, top-5 and the relative median rank with chance
    (1 / images, 5 / images, 0.5)."""
    rows, names = [], sorted(set(subjects)) if subjects is not None else [""]
    for idx in subject_groups(subjects if subjects is not None else [""] * len(pred)):
        sub_ids = [ids[i] for i in idx]
        uniq = sorted(set(sub_ids))
        first = {n: int(idx[sub_ids.index(n)]) for n in uniq}
        cand = torch.from_numpy(emb[[first[n] for n in uniq]])
        sim = cosine_similarity(torch.from_numpy(pred[idx]), cand)
        truth = torch.tensor([uniq.index(n) for n in sub_ids])
        rank = (sim >= sim.gather(1, truth[:, None])).sum(1) - 1  # 0 = first; ties count against
        n = len(uniq)
        rows.append({"top1_large_set": {"value": float((rank < 1).double().mean()), "chance": 1 / n, "candidates": n},
                     "top5_large_set": {"value": float((rank < 5).double().mean()), "chance": min(1.0, 5 / n),
                                        "candidates": n},
                     "relative_median_rank_large_set": {"value": float((rank.double() / max(1, n - 1)).median()),
                                                        "chance": 0.5, "candidates": n},
                     "large_set_trials": {"value": float(len(idx)), "chance": None, "candidates": n}})
    return _mean_over_subjects(rows, names)
