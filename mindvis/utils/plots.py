"""PNG figures people look at: loss curves and fMRI reconstructions."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


def _save(fig, path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def plot_loss_curves(path: str | os.PathLike, curves: dict[str, tuple[Sequence[float], Sequence[float]]],
                     title: str = "", xlabel: str = "epoch", ylabel: str = "loss") -> None:
    """``curves``: name -> (x values, y values)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in curves.items():
        if len(x):
            ax.plot(x, y, marker="o" if len(x) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_history(path: str | os.PathLike, history: list[dict], title: str, val_key: str | None = "val_loss",
                 train_label: str = "train loss", val_label: str = "validation loss") -> None:
    """The loss curves of a training history (one dict per epoch, with ``epoch`` and ``loss``): the training loss
    of every epoch and ``val_key`` where an epoch has it (None: the training loss alone)."""
    curves = {train_label: ([h["epoch"] for h in history], [h["loss"] for h in history])}
    if val_key is not None:
        ev = [h for h in history if val_key in h]
        curves[val_label] = ([h["epoch"] for h in ev], [h[val_key] for h in ev])
    plot_loss_curves(path, curves, title=title)


def plot_fmri_reconstructions(path: str | os.PathLike, truth: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                              patch_size: int, title: str = "") -> None:
    """One row per sample: ground truth, the visible patches, the reconstruction (masked patches
    shaded), with the correlation on masked voxels. truth/pred (N, V), mask (N, L)."""
    n = len(truth)
    fig, axs = plt.subplots(n, 3, figsize=(15, 1.8 * n + 0.6), squeeze=False, sharey="row")
    x = np.arange(truth.shape[1])
    for i in range(n):
        vox_mask = np.repeat(mask[i], patch_size).astype(bool)
        visible = np.where(vox_mask, np.nan, truth[i])
        r = np.corrcoef(pred[i][vox_mask], truth[i][vox_mask])[0, 1] if vox_mask.any() else float("nan")
        axs[i, 0].plot(x, truth[i], lw=0.6)
        axs[i, 1].plot(x, visible, lw=0.6)
        axs[i, 2].plot(x, truth[i], lw=0.6, color="0.7", label="truth")
        axs[i, 2].plot(x, pred[i], lw=0.6, color="C3", label="reconstruction")
        for ax in axs[i, 1:]:
            for j in np.nonzero(mask[i])[0]:
                ax.axvspan(j * patch_size, (j + 1) * patch_size, color="0.9", lw=0)
        axs[i, 2].set_ylabel(f"r = {r:.3f}", rotation=0, labelpad=30)
        axs[i, 2].yaxis.set_label_position("right")
    for ax, t in zip(axs[0], ("ground truth", "visible patches (masked shaded)", "reconstruction vs truth")):
        ax.set_title(t)
    axs[0, 2].legend(loc="upper right", fontsize=7)
    axs[-1, 1].set_xlabel("voxel")
    fig.suptitle(title)
    _save(fig, path)


def save_image_grid(path: str | os.PathLike, rows: Sequence[np.ndarray], pad: int = 2) -> None:
    """Write a PNG grid: one row per array (K, H, W, 3) uint8 or float in [0, 1] (ground truth first, as the paper)."""
    from PIL import Image

    rows = [np.asarray(r) for r in rows]
    rows = [(np.clip(r, 0, 1) * 255).round().astype(np.uint8) if r.dtype != np.uint8 else r for r in rows]
    k = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    grid = np.full((len(rows) * (h + pad) + pad, k * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            grid[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = img
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
