"""Stage-B training step time and peak memory: the paper configuration (label2img-sized prior with
random weights, paper SC-MBM encoder on 4,656 voxels, 256 x 256 images, batch 5) and the synthetic one.

    python bench/bench_finetune.py [--device cuda] [--steps 3] [--out bench/results/finetune_cpu.md]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from timing import device_label, time_steps

CONFIGS = {
    "paper (GOD: batch 5, 256 px, label2img-sized UNet)": "paper",
    "synthetic preset (batch 16, 32 px prior)": "synthetic",
}


def build(kind: str):
    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import build_prior_models
    from mindvis.models.conditioner import ConditionerConfig, FMRIConditioner
    from mindvis.models.dc_ldm import DCLDM
    from mindvis.models.priors import LDM_SCHEDULE, label2img_architecture
    from mindvis.models.sc_mbm import mbm_config

    if kind == "paper":
        unet, vae, sched = label2img_architecture()
        enc, batch, size = mbm_config("paper", 4656), 5, 256
    else:
        from diffusers import UNet2DConditionModel

        vae, unet, _ = build_prior_models(PriorConfig(), 100)
        unet = UNet2DConditionModel.from_config(unet.config, class_embed_type="identity")
        sched, enc, batch, size = dict(LDM_SCHEDULE), mbm_config("tiny", 1072), 16, 32
    cond = FMRIConditioner(ConditionerConfig(encoder=enc.__dict__, context_dim=unet.config.cross_attention_dim,
                                             time_embed_dim=unet.time_embedding.linear_2.out_features))
    return DCLDM(unet, vae, cond, sched), enc.num_voxels, batch, size


def run_one(kind: str, steps: int, device: str, precision: str = "no") -> dict:
    import torch

    torch.manual_seed(0)
    model, voxels, batch, size = build(kind)
    model.to(device)
    model.set_trainable("cross_attention")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5.3e-5)
    imgs, fmri = torch.rand(batch, 3, size, size, device=device) * 2 - 1, torch.randn(batch, 1, voxels, device=device)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model(imgs, fmri)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        opt.zero_grad()
        return loss

    losses = []
    out = time_steps(lambda: losses.append(float(step())), steps, device)
    out |= {"params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "trainable_M": sum(p.numel() for p in params) / 1e6, "samples_per_s": batch / out["step_s"],
            "loss": losses[-1], "batch": batch, "size": size}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--out", default="bench/results/finetune_cpu.md")
    p.add_argument("--only", nargs="*", choices=sorted(set(CONFIGS.values())), help="run only these configurations")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.device, args.precision)))
        return
    import torch

    rows = []
    for name, kind in CONFIGS.items():
        if args.only and kind not in args.only:
            continue
        res = subprocess.run([sys.executable, __file__, "--one", kind, "--steps", str(args.steps), "--device",
                              args.device, "--precision", args.precision], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(f"| {name} | {r['params_M']:.1f} | {r['trainable_M']:.1f} | {r['step_s']:.2f} | "
                    f"{r['samples_per_s']:.2f} | {r['peak_rss_GiB']:.2f} | {r.get('peak_gpu_GiB', float('nan')):.2f} |")
        print(rows[-1], flush=True)
    dev = device_label(args.device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join([
        f"# Stage-B training step ({args.device}: {dev}; torch {torch.__version__}; precision {args.precision}; "
        f"{args.steps} timed steps; random weights)", "",
        "| configuration | parameters (M) | trainable (M) | s / step | samples / s | peak RSS (GiB) | peak GPU (GiB) |",
        "|---|---|---|---|---|---|---|", *rows, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
