"""Evaluate reconstructions: the paper's n-way classification and pair-wise metrics, as a report.

    report = evaluate(samples, ground_truth, classifier=load_classifier("vit_h_14"))
    write_report(report, "runs/eval")        # eval.json + eval.md

``samples`` (N, K, 3, H, W) in [0, 1]: K reconstructions per test fMRI; ``ground_truth`` (N, 3, H, W).
Every metric that cannot run here (missing weights or packages) is skipped with the reason in the report.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..utils.io import atomic_write_json, atomic_write_text
from .metrics import (frechet_distance, identification, n_way_top_k, pairwise_feature_distance, pairwise_mse,
                      pairwise_pcc, pairwise_ssim)

log = logging.getLogger("mindvis.eval")
PAIRWISE = ("mse", "pcc", "ssim", "lpips")
DEFAULT_SETTINGS = {"n_way": 50, "top_k": 1, "trials": 50, "metrics": ["nway", *PAIRWISE, "fid"]}
# The MinD-Vis paper's evaluation (its gen_eval.py / eval_metrics.py): ViT-H/14 SWAG at 518 px, 50-way top-1 over 50
# distractor draws per sample, averaged over the samples (and the best sample), pair-wise MSE / PCC / SSIM / LPIPS;
# 5 samples per fMRI from PLMS with 250 steps in fp32.
PROTOCOLS = {"paper": {"classifier": "vit_h_14", "n_way": 50, "top_k": 1, "trials": 50,
                       "metrics": ["nway", *PAIRWISE],
                       "sampling": {"num_samples": 5, "scheduler": "plms", "steps": 250, "precision": "fp32"}}}


def protocol_deviations(protocol: str, sampling: dict, chosen: dict) -> list[str]:
    """How samples (their ``sampling`` metadata) and the chosen evaluation settings differ from ``protocol``."""
    spec = PROTOCOLS[protocol]
    out = [f"sampling {k}={sampling.get(k)!r} (protocol: {v!r})" for k, v in spec["sampling"].items()
           if sampling.get(k) != v]
    out += [f"{k}={chosen[k]!r} (protocol: {spec[k]!r})" for k in ("classifier", "n_way", "top_k", "trials", "metrics")
            if k in chosen and chosen[k] != spec[k]]
    return out


def lpips_features(model=None):
    """((features fn, channel weights), None) for LPIPS (AlexNet), or (None, reason) when it cannot run.

    ``model`` is an ``lpips.LPIPS`` instance; by default the pretrained AlexNet one (its backbone weights
    come from torchvision's cache).
    """
    if model is None:
        try:
            import lpips
        except ImportError:
            return None, "the lpips package is not installed (pip install lpips)"
        try:
            model = lpips.LPIPS(net="alex", verbose=False)
        except Exception as e:  # noqa: BLE001 - AlexNet weights come from torchvision's cache / the network
            return None, f"LPIPS AlexNet weights unavailable ({type(e).__name__})"
    model = model.eval()
    weights = [lin.model[-1].weight.detach().flatten() for lin in model.lins]

    @torch.no_grad()
    def feats(x):
        return list(model.net(model.scaling_layer(x * 2 - 1)))

    return (feats, weights), None


def _inception():
    try:
        from torchvision.models import Inception_V3_Weights, inception_v3

        net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).eval()
    except Exception as e:  # noqa: BLE001
        return None, f"Inception-v3 weights unavailable ({type(e).__name__})"
    net.fc = torch.nn.Identity()
    return net, None


def _mean_std(x: torch.Tensor) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)) if x.numel() > 1 else 0.0}


@torch.no_grad()
def evaluate(samples: torch.Tensor, ground_truth: torch.Tensor, classifier=None, n_way: int = 50, top_k: int = 1,
             trials: int = 50, metrics=("nway", *PAIRWISE, "fid"), seed: int = 0, lpips_model=None) -> dict:
    """The report dict: every metric with its spread, and the settings."""
    t0 = time.time()
    if samples.ndim != 5 or ground_truth.ndim != 4:
        raise ValueError(f"samples must be (N, K, 3, H, W) and ground truth (N, 3, H, W); got {tuple(samples.shape)} "
                         f"and {tuple(ground_truth.shape)}")
    n, k = samples.shape[:2]
    if ground_truth.shape[0] != n:
        raise ValueError(f"{n} sets of samples but {ground_truth.shape[0]} ground-truth images")
    if samples.shape[-2:] != ground_truth.shape[-2:]:
        raise ValueError(f"image sizes differ: samples {tuple(samples.shape[-2:])}, ground truth "
                         f"{tuple(ground_truth.shape[-2:])}; resample one of them")
    samples, ground_truth = samples.float(), ground_truth.float()
    flat = samples.reshape(n * k, *samples.shape[2:])
    report = {"settings": {"n_images": n, "samples_per_image": k, "n_way": n_way, "top_k": top_k, "trials": trials,
                           "seed": seed, "image_size": list(ground_truth.shape[-2:])}, "metrics": {}, "skipped": {}}
    gen = torch.Generator().manual_seed(seed)

    if "nway" in metrics:
        if classifier is None:
            report["skipped"]["nway"] = "no classifier given"
        else:
            p_gen = classifier.probs(flat)  # (N*K, C)
            true = classifier.probs(ground_truth).argmax(1)  # the class the classifier sees in the ground truth
            if n_way > p_gen.shape[1]:
                raise ValueError(f"n_way={n_way} is larger than the classifier's {p_gen.shape[1]} classes")
            acc = n_way_top_k(p_gen, true.repeat_interleave(k), n_way, top_k, trials, gen).view(n, k)
            name = f"{n_way}way_top{top_k}"
            report["metrics"][f"{name}_acc"] = _mean_std(acc.mean(1)) | {"chance": top_k / n_way}
            report["metrics"][f"{name}_acc_best_sample"] = _mean_std(acc.max(1).values)

    lp, lp_reason = lpips_features(lpips_model) if "lpips" in metrics else (None, None)
    for m in PAIRWISE:
        if m not in metrics:
            continue
        if m == "lpips" and lp is None:
            report["skipped"]["lpips"] = lp_reason
            continue
        if n < 2:
            report["skipped"][m] = "identification needs at least two test images"
            continue
        every = samples.flatten(0, 1)  # (N K, 3, H, W): one call per metric, so ground-truth work is done once
        if m == "mse":
            sim, higher = pairwise_mse(every, ground_truth), False
        elif m == "pcc":
            sim, higher = pairwise_pcc(every, ground_truth), True
        elif m == "ssim":
            sim, higher = pairwise_ssim(every, ground_truth), True
        else:
            feats, weights = lp
            sim, higher = pairwise_feature_distance(feats(every), feats(ground_truth), weights), False
        sim = sim.view(n, k, n)  # (reconstruction, sample, ground truth)
        scores = torch.stack([identification(sim[:, s], higher) for s in range(k)], 1)  # (N, K)
        report["metrics"][f"{m}_identification"] = _mean_std(scores.mean(1)) | {"chance": 0.5}
        paired = torch.stack([sim[:, s].diagonal().mean() for s in range(k)])  # per sample index
        report["metrics"][f"{m}"] = _mean_std(paired)

    if "fid" in metrics:
        net, reason = _inception()
        if net is None:
            report["skipped"]["fid"] = reason
        else:
            from .classifiers import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier

            inc = ImageClassifier(net, 299, IMAGENET_MEAN, IMAGENET_STD)
            report["metrics"]["fid"] = {"value": frechet_distance(inc.features(flat), inc.features(ground_truth))}
    report["seconds"] = round(time.time() - t0, 2)
    return report


def markdown_report(report: dict, title: str = "Reconstruction evaluation") -> str:
    s = report["settings"]
    lines = [f"# {title}", "",
             f"{s['n_images']} test images x {s['samples_per_image']} samples, {s['image_size'][0]} px; "
             f"n-way: n = {s['n_way']}, top-{s['top_k']}, {s['trials']} trials, seed {s['seed']}.", ""]
    if "protocol" in report:
        p = report["protocol"]
        lines += [f"Protocol: {p['name']}" + (" (followed exactly)." if not p["deviations"] else
                                             "; deviations: " + "; ".join(p["deviations"]) + "."), ""]
        acc, best = (report["metrics"].get(f"{s['n_way']}way_top{s['top_k']}_acc{x}") for x in ("", "_best_sample"))
        if p["name"] == "paper" and acc:
            lines += ["The paper's Table 1 cell (50-way top-1 accuracy, %, mean over samples; best sample):", "",
                      f"| {acc['mean'] * 100:.1f} ± {acc['std'] * 100:.1f} | {best['mean'] * 100:.1f} |", ""]
    lines += ["| metric | mean | std | chance |", "|---|---|---|---|"]
    for name, v in report["metrics"].items():
        if "mean" in v:
            lines.append(f"| {name} | {v['mean']:.4f} | {v['std']:.4f} | {v.get('chance', '')} |")
        else:
            lines.append(f"| {name} | {v['value']:.4f} | | |")
    if report["skipped"]:
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    lines += ["", "Identification: fraction of other ground-truth images the reconstruction is further from than its "
              "own (1 = perfect, 0.5 = chance); mean over images of the mean over samples. `*_acc` is the mean over "
              "samples, `*_acc_best_sample` the best sample per image (both as in the MinD-Vis code)."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder, title: str = "Reconstruction evaluation") -> None:
    from pathlib import Path

    folder = Path(folder)
    atomic_write_json(folder / "eval.json", report)
    atomic_write_text(folder / "eval.md", markdown_report(report, title))


def to_float_images(x: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    t = torch.from_numpy(np.asarray(x)).float() / 255
    return t.movedim(-1, -3)
