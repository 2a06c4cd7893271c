"""What an align run writes for people: the markdown report, retrieval grids and the averaging plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mindvis.evaluation.retrieval import cosine_similarity
from mindvis.utils.plots import plot_loss_curves, save_image_grid


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_report(report: dict) -> str:
    lines = [f"# Retrieval: {report['decoder']} -> {report['target']}", "", report["data"], ""]
    for split in ("val", "test"):
        if split not in report:
            continue
        lines += [f"## {split} ({report[f'{split}_items']} items)", "", "| metric | value | std | chance |",
                  "|---|---|---|---|"]
        for name, m in report[split].items():
            lines.append(f"| {name} | {_fmt(m['value'])} | {_fmt(m.get('std'))} | {_fmt(m['chance'])} |")
        lines.append("")
        subjects = next((list(m["by_subject"]) for m in report[split].values() if "by_subject" in m), None)
        if subjects:
            lines += [f"{len(subjects)} subjects ({', '.join(subjects)}): each value is the mean of the subjects' own "
                      "scores (each subject's items ranked among its own; per subject in retrieval.json, by_subject).",
                      ""]
    if report.get("averaging"):
        lines += ["## test-time averaging (test fMRI of the first r repetitions averaged)", "",
                  "| repetitions | top-1 | top-5 | chance top-1 |", "|---|---|---|---|"]
        for row in report["averaging"]:
            lines.append(f"| {row['repetitions']} | {row['top1']:.4f} | {row['top5']:.4f} | {row['chance']:.4f} |")
        lines.append("")
    if report.get("time_resolved"):
        lines += ["## time-resolved decoding (one decoder per window; test images averaged)", "",
                  "| window (s) | top-1 | top-5 | median rank | chance top-5 |", "|---|---|---|---|---|"]
        for r in report["time_resolved"]:
            lines.append(f"| {r['start']:+.2f} to {r['stop']:+.2f} | {r['top1']:.4f} | {r['top5']:.4f} | "
                         f"{r['median_rank']:.3f} | {r['chance_top5']:.4f} |")
        lines.append("")
    lines.append(f"selected: {report['selection']}")
    return "\n".join(lines) + "\n"


def _thumb(images: np.ndarray, size: int = 64) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t.clamp(0, 255) / 255).permute(0, 2, 3, 1).numpy()


def retrieval_grid(path: Path, pred: np.ndarray, truth_images: np.ndarray, gallery_emb: np.ndarray,
                   gallery_images: np.ndarray, show: int, k: int = 5, own: np.ndarray | None = None) -> None:
    """Rows: the seen image, then the ``k`` gallery images nearest to its decoded embedding; where ``own[i]`` is
    the gallery index of row i's own image, that image is framed in green."""
    if show == 0:
        return
    sim = cosine_similarity(torch.from_numpy(pred[:show]), torch.from_numpy(gallery_emb)).numpy()
    best = np.argsort(-sim, axis=1)[:, :k]
    rows = []
    for i in range(len(best)):
        thumbs = _thumb(gallery_images[best[i]])
        for j in np.nonzero(best[i] == own[i])[0] if own is not None else []:
            for edge in (np.s_[:3], np.s_[-3:], np.s_[:, :3], np.s_[:, -3:]):
                thumbs[j][edge] = (0.1, 0.85, 0.1)
        rows.append(np.concatenate([_thumb(truth_images[i:i + 1]), thumbs]))
    save_image_grid(path, rows)


def plot_averaging(path: Path, curve: list[dict]) -> None:
    r = [c["repetitions"] for c in curve]
    plot_loss_curves(path, {"top-1": (r, [c["top1"] for c in curve]), "top-5": (r, [c["top5"] for c in curve]),
                            "chance top-1": (r, [c["chance"] for c in curve])},
                     title="test-time averaging", xlabel="repetitions averaged", ylabel="retrieval accuracy")
