"""Sampling speed against quality: solvers, step counts and precisions on one trained DC-LDM, in one process.

For each setting and each seed of the starting noise, the split's fMRI are sampled (5 images each), timed, and
scored with the synthetic world's classifier (50-way top-1) and by pixel-correlation identification; the table
gives the mean over seeds ± the spread over seeds, and the speed-up over the first setting (the paper's PLMS 250
steps, fp32). Choose settings on ``--split val``; report the chosen one against the paper's once on ``--split test``.

    python bench/bench_samplers.py --model runs/finetune/RUN --split val --out bench/results/samplers_val.md
    python bench/bench_samplers.py --model runs/finetune/RUN --split test --settings plms:250:fp32 dpm++:10:bf16 \
        --out bench/results/samplers_test.md
    python bench/bench_samplers.py --paper-size --settings plms:250:fp32 dpm++:10:bf16 --out bench/results/samplers_paper.md

``--paper-size`` times the paper's architecture (label2img-sized UNet, VQ-f4 at 256 px, paper SC-MBM on 4,656 voxels)
with random weights, batch 5: each setting is run at 2 and 4 steps, and its seconds per image at the full step count
are extrapolated from the per-step cost (the difference) and the fixed cost (conditioning and decoding).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from timing import device_label

DEFAULT_SETTINGS = ["plms:250:fp32", "ddim:50:fp32", "dpm++:25:fp32", "dpm++:10:fp32", "dpm++:5:fp32",
                    "dpm++karras:10:fp32", "dpm++karras:5:fp32", "unipc:10:fp32", "unipc:5:fp32",
                    "dpm++:25:bf16", "dpm++:10:bf16", "dpm++:5:bf16", "unipc:10:bf16", "unipc:5:bf16"]


def main() -> None:
    from mindvis.world import SyntheticWorldConfig
    from mindvis.evaluation import evaluate
    from mindvis.evaluation.classifiers import load_classifier
    from mindvis.pipelines import MindVisPipeline
    from mindvis.pipelines.sample_cli import _truth_images, resolve_model_dir, split_from_run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a mindvis-finetune run on the synthetic world (uses best/); not with --paper-size")
    p.add_argument("--split", default="val", choices=["val", "test", "test-trials"])
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="scheduler:steps:precision ...")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=50, help="images denoised at once (the same for every setting)")
    p.add_argument("--out", default="bench/results/samplers_val.md")
    p.add_argument("--paper-size", action="store_true", help="time the paper-size architecture (random weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings on a GPU machine)")
    args = p.parse_args()
    if args.paper_size:
        return paper_size(args)
    if not args.model:
        p.error("--model is required (or --paper-size)")
    model_dir = resolve_model_dir(args.model)
    pipe = MindVisPipeline.from_pretrained(model_dir, args.device)
    split, world = split_from_run(model_dir, args.split)
    truth = torch.from_numpy(_truth_images(split, pipe.model.image_size)).permute(0, 3, 1, 2).float() / 255
    classifier = load_classifier("synthetic", world_cfg=SyntheticWorldConfig(**world), image_size=truth.shape[-1])
    fmri = torch.from_numpy(split.fmri)
    pipe(fmri[:2], num_samples=1, num_inference_steps=2, scheduler="dpm++")  # warm-up
    rows, results = [], {}
    for setting in args.settings:
        sched, steps, precision = setting.split(":")
        per_seed = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            images = pipe(fmri, num_samples=args.num_samples, num_inference_steps=int(steps), scheduler=sched,
                          seed=seed, batch_size=args.batch_size, precision=precision)
            sec = (time.perf_counter() - t0) / (len(fmri) * args.num_samples)
            rep = evaluate(images, truth, classifier, metrics=("nway", "pcc"), seed=seed)["metrics"]
            per_seed.append({"s_per_image": sec, "nway": rep["50way_top1_acc"]["mean"],
                             "pcc_id": rep["pcc_identification"]["mean"]})
        results[setting] = per_seed
        base = np.mean([r["s_per_image"] for r in results[args.settings[0]]])
        agg = {k: (np.mean([r[k] for r in per_seed]), np.std([r[k] for r in per_seed])) for k in per_seed[0]}
        rows.append(f"| {sched} | {steps} | {precision} | {agg['s_per_image'][0]:.4f} | {base / agg['s_per_image'][0]:.1f}x | "
                    f"{100 * agg['nway'][0]:.1f} ± {100 * agg['nway'][1]:.1f} % | "
                    f"{agg['pcc_id'][0]:.3f} ± {agg['pcc_id'][1]:.3f} |")
        print(rows[-1], flush=True)
    head = [f"# Sampling settings on the {args.split} split ({len(fmri)} fMRI x {args.num_samples} samples; "
            f"{device_label(args.device)}; torch {torch.__version__}; batch {args.batch_size})", "",
            f"Model: {model_dir}. Mean over seeds {args.seeds} of the starting noise ± std over seeds. Chance: 50-way "
            "2 %, identification 0.5.", "",
            "| scheduler | steps | precision | s / image | speed-up | 50-way top-1 | PCC identification |",
            "|---|---|---|---|---|---|---|"]
    Path(args.out).write_text("\n".join(head + rows) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def paper_size(args) -> None:
    from bench_finetune import build

    from mindvis.pipelines import MindVisPipeline

    torch.manual_seed(0)
    model, voxels, batch, size = build("paper")
    pipe = MindVisPipeline(model.to(args.device).eval())
    fmri = torch.randn(batch, voxels, device=args.device)
    rows, base = [], None
    for setting in args.settings:
        sched, steps, precision = setting.split(":")
        t = {}
        for k in (2, 4):
            t0 = time.perf_counter()
            pipe(fmri, num_samples=1, num_inference_steps=k, scheduler=sched, batch_size=batch, precision=precision)
            t[k] = (time.perf_counter() - t0) / batch
        per_step = (t[4] - t[2]) / 2
        total = t[2] - 2 * per_step + int(steps) * per_step
        base = base or total
        rows.append(f"| {sched} | {steps} | {precision} | {per_step:.3f} | {total:.1f} | {base / total:.1f}x |")
        print(rows[-1], flush=True)
    Path(args.out).write_text("\n".join([
        f"# Sampling time at paper size ({args.device}: {device_label(args.device)}; torch {torch.__version__}; "
        f"random weights, {size} px, batch {batch})", "",
        "Extrapolated from runs at 2 and 4 steps: seconds per image = fixed cost + steps x per-step cost.", "",
        "| scheduler | steps | precision | s / step / image | s / image | speed-up |", "|---|---|---|---|---|---|",
        *rows, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
