"""Stage-A training throughput and peak memory, for the tiny (synthetic preset) and the paper SC-MBM.

Each configuration runs in its own process (so peak memory is its own): a few warm-up steps, then
timed AdamW steps on random fMRI of the configuration's voxel count. Results go to a Markdown table.

    python bench/bench_pretrain.py                   # CPU; on a GPU machine add --device cuda
    python bench/bench_pretrain.py --steps 20 --out bench/results/pretrain_cuda.md --device cuda
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from timing import device_label, time_steps

CONFIGS = {
    # name: (variant, num_voxels, batch size)
    "tiny (synthetic preset)": ("tiny", 896, 32),
    "paper, batch 8": ("paper", 4656, 8),
    "paper, batch 100 (paper's)": ("paper", 4656, 100),
}


def run_one(variant: str, num_voxels: int, batch: int, steps: int, device: str, precision: str) -> dict:
    import torch

    from mindvis.models import MaskedBrainModel, mbm_config

    torch.manual_seed(0)
    model = MaskedBrainModel(mbm_config(variant, num_voxels)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch, 1, num_voxels, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss, _, _ = model(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
        opt.step()
        opt.zero_grad()

    out = time_steps(step, steps, device, warmup=2)
    out |= {"params_M": sum(p.numel() for p in model.parameters()) / 1e6, "samples_per_s": batch / out["step_s"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--only", nargs="*", help="run only these configuration names")
    p.add_argument("--out", default="bench/results/pretrain_cpu.md", help="Markdown table to write")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(run_one(*CONFIGS[args.one], args.steps, args.device, args.precision)))
        return
    import torch

    rows = []
    for name in CONFIGS:
        if args.only and name not in args.only:
            continue
        res = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps),
                              "--device", args.device, "--precision", args.precision],
                             capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        variant, voxels, batch = CONFIGS[name]
        rows.append(f"| {name} | {voxels} | {batch} | {r['params_M']:.1f} | {r['step_s']:.3f} | "
                    f"{r['samples_per_s']:.1f} | {r['peak_rss_GiB']:.2f} | "
                    f"{r.get('peak_gpu_GiB', float('nan')):.2f} |")
        print(rows[-1], flush=True)
    dev = device_label(args.device)
    table = "\n".join([
        f"# Stage-A training step ({args.device}: {dev}; torch {torch.__version__}; precision {args.precision}; "
        f"{args.steps} timed steps)", "",
        "| configuration | voxels | batch | parameters (M) | s / step | samples / s | peak RSS (GiB) | peak GPU (GiB) |",
        "|---|---|---|---|---|---|---|---|", *rows, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
