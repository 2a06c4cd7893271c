"""Memory of the stage-A HCP data path as the number of subjects grows.

Writes N subjects of random data in the MinD-Vis HCP layout at the real size (1,200 frames,
V1..V4 = 4,656 voxels), then, in a fresh process per N, prepares them (memory-mapped cache) and
reads one epoch through a DataLoader. Peak RSS should stay flat in N; disk grows linearly.

    python bench/bench_hcp_memory.py --subjects 5 20 60
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROI_SIZES = {"V1": 1380, "V2": 1260, "V3": 1080, "V4": 936}  # 4,656 voxels in all
FRAMES = 1200


def write_subjects(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for s in range(n):
        d = root / f"{100000 + s}"
        if (d / "HCP_visual_voxel.npz").exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "HCP_visual_voxel.npz",
                 **{k: rng.standard_normal((FRAMES, v), dtype=np.float32) for k, v in ROI_SIZES.items()})


def measure(root: Path, n: int, cache: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from mindvis.data.dataset import FMRIDataset
    from mindvis.data.fmri import padded_length
    from mindvis.data.hcp import hcp_subjects, prepared_hcp

    subs = hcp_subjects(root)[:n]
    t = time.perf_counter()
    arrays = prepared_hcp(root, "VC", 10, subs, cache)
    t_prep = time.perf_counter() - t
    ds = FMRIDataset(arrays, padded_length(arrays[0].shape[1], 16))
    t = time.perf_counter()
    total = 0.0
    for batch in DataLoader(ds, batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(0)):
        total += float(batch["fmri"].sum())
    return {"subjects": n, "samples": len(ds), "prepare_s": t_prep, "epoch_read_s": time.perf_counter() - t,
            "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "cache_GiB": sum(p.stat().st_size for p in cache.rglob("*.npy")) / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, nargs="+", default=[5, 20, 60])
    p.add_argument("--workdir", default=None, help="where to write the random subjects (default: a temp folder)")
    p.add_argument("--out", default="bench/results/hcp_memory.md")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        root, n, cache = args.one
        print(json.dumps(measure(Path(root), int(n), Path(cache))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mindvis-hcp-bench-"))
    write_subjects(work / "HCP", max(args.subjects))
    rows = []
    for n in args.subjects:
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)  # measure a cold preparation
        res = subprocess.run([sys.executable, __file__, "--one", str(work / "HCP"), str(n), str(cache)],
                             capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(f"| {n} | {r['samples']} | {r['prepare_s']:.2f} | {r['epoch_read_s']:.2f} | "
                    f"{r['peak_rss_GiB']:.2f} | {r['cache_GiB']:.2f} |")
        print(rows[-1], flush=True)
    table = "\n".join(["# Stage-A HCP data path: memory as subjects grow (1,200 frames x 4,656 voxels each, "
                       "windows of 10 frames)", "",
                       "| subjects | samples | prepare (s) | read one epoch (s) | peak RSS (GiB) | prepared cache on disk (GiB) |",
                       "|---|---|---|---|---|---|", *rows, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
