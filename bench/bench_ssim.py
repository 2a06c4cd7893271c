"""Pair-wise SSIM identification at 256 px: 50 test images x 5 samples against the 50 ground truths.

Rows, each in its own process (the same random images; time does not depend on the values):
  * ``before``: the box-filter implementation mindvis shipped before the fused kernel (kept here as the baseline);
  * ``eager``: today's ``pairwise_ssim(..., compile=False)``;
  * ``compiled, cold``: ``compile=True`` with an empty compiler cache (includes compiling the kernel);
  * ``compiled, warm``: the same in a new process, the compiled kernel now in the on-disk cache.
Each row also reports the largest difference from scikit-image's ``structural_similarity`` over a few pairs.

    python bench/bench_ssim.py [--out bench/results/ssim_cpu.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import device_label

N, K, SIZE = 50, 5, 256


def before(rec, gt, win=7, chunk=64):
    """The previous implementation: per-image local statistics, then the cross term of every pair by
    separable average pooling of the product, in eager mode."""
    import torch
    import torch.nn.functional as F

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    norm = win * win / (win * win - 1)

    def box(x):
        return F.avg_pool2d(F.avg_pool2d(x, (win, 1), stride=1), (1, win), stride=1)

    mu_r, mu_g = box(rec), box(gt)
    var_r, var_g = norm * (box(rec * rec) - mu_r ** 2), norm * (box(gt * gt) - mu_g ** 2)
    den_g, vden_g = mu_g ** 2 + c1, var_g + c2
    out = torch.empty(len(rec), len(gt))
    for i in range(len(rec)):
        mr, vr = mu_r[i:i + 1], var_r[i:i + 1]
        for j in range(0, len(gt), chunk):
            mg = mu_g[j:j + chunk]
            cov = box(rec[i:i + 1] * gt[j:j + chunk]).sub_(mr * mg).mul_(2 * norm).add_(c2)
            num = cov.mul_(mr * mg * 2 + c1)
            den = (den_g[j:j + chunk] + mr ** 2).mul_(vden_g[j:j + chunk] + vr)
            out[i, j:j + chunk] = num.div_(den).mean(dim=(1, 2, 3))
    return out


def one(impl: str) -> dict:
    import torch
    from skimage.metrics import structural_similarity

    from mindvis.evaluation.metrics import identification, pairwise_ssim

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(N, 3, SIZE, SIZE, generator=g)
    samples = (gt[:, None] + 0.3 * torch.randn(N, K, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    t0 = time.perf_counter()
    if impl == "before":  # one call per sample set, as evaluate() did
        sims = torch.stack([before(samples[:, s], gt) for s in range(K)], 1)
    else:
        sims = pairwise_ssim(samples.flatten(0, 1), gt, compile=impl != "eager").view(N, K, N)
    seconds = time.perf_counter() - t0
    ident = torch.stack([identification(sims[:, s]) for s in range(K)]).mean().item()
    err = max(abs(sims[i, s, j].item() - structural_similarity(
        samples[i, s].permute(1, 2, 0).double().numpy(), gt[j].permute(1, 2, 0).double().numpy(),
        data_range=1, channel_axis=-1)) for i, s, j in [(0, 0, 0), (7, 2, 7), (49, 4, 3), (20, 1, 33)])
    return {"seconds": seconds, "identification": ident, "max_abs_diff_skimage": err}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/ssim_cpu.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args.child)))
        return
    lines = [f"# Pair-wise SSIM, {N} images x {K} samples vs {N} ground truths at {SIZE} px ({device_label('cpu')})",
             "", "| implementation | seconds (5 sample sets) | speed-up vs before | max abs diff vs scikit-image | "
             "identification |", "|---|---|---|---|---|"]
    base = None
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        for impl, label in [("before", "before (eager box filter)"), ("eager", "pairwise_ssim, eager"),
                            ("compiled", "pairwise_ssim, compiled, cold cache"),
                            ("compiled", "pairwise_ssim, compiled, warm cache")]:
            out = subprocess.run([sys.executable, __file__, "--child", impl], capture_output=True, text=True,
                                 check=True, env=env)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r["seconds"]
            lines.append(f"| {label} | {r['seconds']:.1f} | {base / r['seconds']:.1f}x | "
                         f"{r['max_abs_diff_skimage']:.1e} | {r['identification']:.4f} |")
            print(lines[-1], flush=True)
    lines += ["", "Cold: the first use on a machine compiles the kernel (torch.compile, C++ on CPU) and stores it in "
              "the compiler cache; later processes load it (warm). Each row runs alone in its own process."]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
