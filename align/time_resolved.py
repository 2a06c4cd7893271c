"""Time-resolved decoding of M/EEG: one decoder per window of the trials, each scored on the averaged test set."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mindvis.data.fmri import DataError
from mindvis.evaluation.retrieval import cosine_similarity, relative_median_rank, top_k
from mindvis.finetune.data import StageBData

from .data import split_test_trials, vectorised
from .decoders import decode
from .scoring import subject_groups
from .training import fit

log = logging.getLogger("mindvis.align")


def crop(data: StageBData, start: float, stop: float) -> StageBData:
    """M/EEG trials cut to the samples with ``start <= t < stop`` (s from image onset)."""
    keep = np.flatnonzero((data.times >= start - 1e-9) & (data.times < stop - 1e-9))
    cut = lambda s: None if s is None else s.with_fmri(np.ascontiguousarray(s.fmri[..., keep]))
    return StageBData(cut(data.train), cut(data.val), cut(data.test), data.num_voxels, data.description,
                      data.layout, data.times[keep], cut(data.large), data.montages)


def time_resolved(cfg: DictConfig, full: StageBData, emb: dict, accelerator, run_dir: Path, main: bool) -> list[dict]:
    """One decoder per window (``cfg.windows``), each selected as the full one is and scored on the averaged test
    set: top-1 / top-5 / relative median rank per window, with chance."""
    w = cfg.windows
    t = full.times
    starts = np.arange(t[0], t[-1] - w.length + 1e-9 + 1 / (2 * max(1, len(t))), w.step)
    if len(starts) == 0:
        raise DataError(f"windows.length {w.length} s is longer than the trials ({t[0]:.3f} to {t[-1]:.3f} s)")
    rows = []
    quiet = OmegaConf.merge(cfg, {"train": {"checkpoint_every": 10**6}})
    for start in tqdm(starts, desc="windows", disable=not main):
        part = vectorised(cfg, crop(full, float(start), float(start + w.length)))
        folder = run_dir / "windows" / f"{start:+.3f}s"
        folder.mkdir(parents=True, exist_ok=True)
        model, _, _, _ = fit(quiet, part, emb, None, accelerator, folder, main)
        test, _ = split_test_trials(part.test)
        pred = torch.from_numpy(decode(model, test.fmri, subjects=test.subjects)["contrastive"])
        scores = []
        for idx in subject_groups(test.subjects):  # each subject's test images among its own; then the mean
            sim = cosine_similarity(pred[idx], torch.from_numpy(emb["test"][idx]))
            n = len(idx)
            scores.append({"top1": top_k(sim, 1), "top5": top_k(sim, 5), "median_rank": relative_median_rank(sim),
                           "chance_top1": 1 / n, "chance_top5": min(1.0, 5 / n)})
        rows.append({"start": float(start), "stop": float(start + w.length), "centre": float(start + w.length / 2),
                     **{k: float(np.mean([sc[k] for sc in scores])) for k in scores[0]}})
        log.info("window %+.3f to %+.3f s: top-5 %.3f (chance %.3f)", start, start + w.length, rows[-1]["top5"],
                 rows[-1]["chance_top5"])
    return rows


def plot_time_resolved(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["centre"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(c, [r["top5"] for r in rows], "o-", label="top-5")
    ax.plot(c, [r["top1"] for r in rows], "s-", label="top-1")
    ax.plot(c, [r["chance_top5"] for r in rows], ":", color="gray", label="chance top-5")
    ax.plot(c, [r["chance_top1"] for r in rows], "--", color="gray", lw=0.8, label="chance top-1")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="window centre (s from image onset)", ylabel="test retrieval", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
