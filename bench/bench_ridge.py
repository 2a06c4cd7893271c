"""Time and peak memory of the cross-validated ridge decoder, up to NSD size.

NSD size: about 9,000 training trials x 15,000 nsdgeneral voxels x 768 target dimensions (a CLIP ViT-L/14 image
embedding). Data are random with a low-rank signal (time does not depend on the values). Each row runs in its own
process so that its peak RSS is its own. With scikit-learn installed, a smaller size is also fitted with
``RidgeCV(alphas, cv=KFold(5))`` (which refits per penalty) for comparison.

    python bench/bench_ridge.py [--out bench/results/ridge_cpu.md]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from timing import device_label

ALPHAS = 15
ROWS = [  # (trials, voxels, targets, dtype, implementation)
    (2000, 5000, 256, "float64", "mindvis"),
    (2000, 5000, 256, "float64", "sklearn"),
    (9000, 15000, 768, "float32", "mindvis"),
    (9000, 15000, 768, "float64", "mindvis"),
]


def one(n: int, v: int, t: int, dtype: str, impl: str) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, v), dtype=np.float32)
    y = (x[:, :64] @ rng.standard_normal((64, t), dtype=np.float32)) * 0.05 + rng.standard_normal((n, t), dtype=np.float32)
    alphas = list(np.logspace(-1, 6, ALPHAS))
    t0 = time.perf_counter()
    if impl == "sklearn":
        from sklearn.linear_model import RidgeCV
        from sklearn.model_selection import KFold

        alpha = float(RidgeCV(alphas=alphas, cv=KFold(5)).fit(x.astype(dtype), y.astype(dtype)).alpha_)
    else:
        from mindvis.models.ridge import RidgeConfig, RidgeDecoder

        m = RidgeDecoder.fit(x, y, RidgeConfig(v, t, alphas, folds=5), dtype=getattr(np, dtype))
        alpha = float(m.alpha[0])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    return {"seconds": seconds, "peak_rss_gib": peak, "alpha": alpha}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/ridge_cpu.md")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        n, v, t, dtype, impl = args.child
        print(json.dumps(one(int(n), int(v), int(t), dtype, impl)))
        return
    lines = [f"# Ridge decoder: 5-fold cross-validation over {ALPHAS} penalties, then the final fit ({device_label('cpu')})",
             "", "| trials | voxels | targets | dtype | implementation | seconds | peak RSS (GiB) | chosen penalty |",
             "|---|---|---|---|---|---|---|---|"]
    for n, v, t, dtype, impl in ROWS:
        if impl == "sklearn":
            import importlib.util

            if importlib.util.find_spec("sklearn") is None:  # scikit-learn is a test dependency only
                continue
        out = subprocess.run([sys.executable, __file__, "--child", str(n), str(v), str(t), dtype, impl],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = "mindvis RidgeDecoder.fit" if impl == "mindvis" else "scikit-learn RidgeCV(cv=KFold(5))"
        lines.append(f"| {n} | {v} | {t} | {dtype} | {name} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | "
                     f"{r['alpha']:.4g} |")
        print(lines[-1], flush=True)
    lines += ["", "Peak RSS includes the random data (float32 x and y) and the Python process."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
