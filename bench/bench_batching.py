"""Seconds per image of a model's default sampling against the batch size and the number of threads: does a batch keep
both cores busy? (One process per thread count, so that torch's thread pool is set before any work.)

    python bench/bench_batching.py --model runs/distill/RUN --out bench/results/batching_cpu.md
    python bench/bench_batching.py --model runs/finetune/RUN --scheduler unipc --steps 8
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def child(args) -> None:
    import time

    import torch

    from mindvis.pipelines import MindVisPipeline
    from mindvis.pipelines.sample_cli import resolve_model_dir

    torch.set_num_threads(args.threads)
    pipe = MindVisPipeline.from_pretrained(resolve_model_dir(args.model))
    fmri = torch.randn(args.fmri, pipe.model.conditioner.mae.config.num_voxels, generator=torch.Generator().manual_seed(0))
    out = {}
    for b in args.batch_sizes:
        kw = dict(num_samples=args.num_samples, num_inference_steps=args.steps, scheduler=args.scheduler,
                  batch_size=b, precision=args.precision)
        pipe(fmri[:max(1, b // args.num_samples)], **kw)  # warm-up (and the precision probe at this batch size)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pipe(fmri, **kw)
            best = min(best, (time.perf_counter() - t0) / (len(fmri) * args.num_samples))
        out[b] = best
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--scheduler", default="auto")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[5, 16, 50, 125, 250])
    p.add_argument("--fmri", type=int, default=50)
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/batching_cpu.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    from mindvis.pipelines.mindvis_pipeline import resolve_sampling
    from mindvis.pipelines.sample_cli import resolve_model_dir

    if args.child:
        return child(args)
    from mindvis.models.dc_ldm import load_sampler

    args.scheduler, args.steps = resolve_sampling(args.scheduler, args.steps, load_sampler(resolve_model_dir(args.model)))
    res = {}
    for t in args.threads:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--scheduler", args.scheduler, "--steps",
               str(args.steps), "--precision", args.precision, "--threads", str(t), "--fmri", str(args.fmri),
               "--num-samples", str(args.num_samples), "--repeats", str(args.repeats), "--batch-sizes",
               *map(str, args.batch_sizes)]
        res[t] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(t, res[t], flush=True)
    rows = [f"| {b} | " + " | ".join(f"{res[t][str(b)]:.4f}" for t in args.threads) +
            (f" | {res[args.threads[0]][str(b)] / res[args.threads[-1]][str(b)]:.2f}x |" if len(args.threads) > 1 else " |")
            for b in args.batch_sizes]
    Path(args.out).write_text("\n".join([
        f"# Sampling seconds per image against batch size and threads ({args.model}; {args.scheduler} {args.steps} "
        f"steps, {args.precision}; {args.fmri} fMRI x {args.num_samples} samples; best of {args.repeats})", "",
        "| batch | " + " | ".join(f"{t} thread(s)" for t in args.threads) +
        (f" | {args.threads[-1]} vs {args.threads[0]} |" if len(args.threads) > 1 else " |"),
        "|---|" + "---|" * (len(args.threads) + (len(args.threads) > 1)), *rows, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
