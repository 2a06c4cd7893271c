"""Sampling seconds per image for each scheduler and step count, and evaluation time.

Sampling uses a trained DC-LDM folder (``--model``, e.g. runs/finetune/RUN/best) or, without one, the
synthetic preset's architecture with random weights (time does not depend on the weights). Evaluation
times 50 test images x 5 samples with every metric that runs here, at 32 px and at the paper's 256 px.

    python bench/bench_sampling.py [--model DIR] [--device cuda] [--out bench/results/sampling_cpu.md]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from timing import device_label

RUNS = [("plms", 250), ("plms", 50), ("ddim", 50), ("dpm++", 25), ("dpm++", 10)]


def random_model():
    from diffusers import UNet2DConditionModel

    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import build_prior_models
    from mindvis.models.conditioner import ConditionerConfig, FMRIConditioner
    from mindvis.models.dc_ldm import DCLDM
    from mindvis.models.priors import LDM_SCHEDULE
    from mindvis.models.sc_mbm import mbm_config

    vae, unet, _ = build_prior_models(PriorConfig(), 100)
    unet = UNet2DConditionModel.from_config(unet.config, class_embed_type="identity")
    cond = FMRIConditioner(ConditionerConfig(encoder=mbm_config("tiny", 1072).__dict__, context_dim=64,
                                             time_embed_dim=unet.time_embedding.linear_2.out_features))
    return DCLDM(unet, vae, cond, dict(LDM_SCHEDULE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a DC-LDM folder (default: random weights, synthetic preset architecture)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=10, help="fMRI samples decoded per run")
    p.add_argument("--out", default="bench/results/sampling_cpu.md")
    args = p.parse_args()
    from mindvis.evaluation import evaluate
    from mindvis.models.dc_ldm import DCLDM
    from mindvis.pipelines import MindVisPipeline

    model = (DCLDM.from_pretrained(args.model) if args.model else random_model()).to(args.device).eval()
    pipe = MindVisPipeline(model)
    fmri = torch.randn(args.images, 1, model.conditioner.mae.config.num_voxels)
    rows = []
    for sched, steps in RUNS:
        t = time.perf_counter()
        pipe(fmri, num_samples=1, num_inference_steps=steps, scheduler=sched, batch_size=args.images)
        dt = (time.perf_counter() - t) / args.images
        rows.append(f"| {sched} | {steps} | {dt:.4f} |")
        print(rows[-1], flush=True)
    ev = []
    for size in (32, 256):
        g = torch.Generator().manual_seed(0)
        gt, samples = torch.rand(50, 3, size, size, generator=g), torch.rand(50, 5, 3, size, size, generator=g)
        t = time.perf_counter()
        report = evaluate(samples, gt, None, metrics=("mse", "pcc", "ssim", "lpips"))
        ev.append(f"| {size} px | {time.perf_counter() - t:.2f} | {', '.join(sorted(report['skipped'])) or '-'} |")
        print(ev[-1], flush=True)
    dev = device_label(args.device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join([
        f"# Sampling and evaluation time ({args.device}: {dev}; torch {torch.__version__}; model "
        f"{args.model or 'synthetic architecture, random weights'}, {model.image_size} px)", "",
        "| scheduler | steps | seconds per image |", "|---|---|---|", *rows, "",
        "Evaluation of 50 test images x 5 samples, pair-wise identification (MSE, PCC, SSIM; LPIPS when installed):",
        "", "| images | seconds | skipped |", "|---|---|---|", *ev, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
