"""The paper's sampler against the fast default, side by side in one process: seconds per image (with the time of
conditioning, UNet steps and decoding), quality with its spread over seeds, and reduced precision's errors.

Synthetic model (a stage-B run and a student of it distilled by mindvis-distill; quality on the split):

    python bench/bench_fast.py --teacher runs/demo/finetune --student runs/distill/RUN --split test \
        --out bench/results/fast_test.md

Paper size (random weights: label2img-sized UNet, paper SC-MBM on 4,656 voxels, VQ-f4 at 256 px, batch 5; the
student has the teacher's architecture, so its time is the teacher's UNet at 1-4 steps with LCM sampling):

    python bench/bench_fast.py --paper-size --out bench/results/fast_paper_cpu.md

PLMS 250 at paper size is extrapolated from runs at 2 and 4 steps (fixed cost + 250 x per-step cost); every other
row is measured whole. ``auto`` precision is measured once per stage and cached before any row is timed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from timing import device_label

# student:lcm:4:auto is mindvis-sample's default for a student; plain: the teacher's own UNet sampled with LCM (no
# distillation), a reference for what distillation adds
SYNTH_SETTINGS = ["teacher:plms:250:fp32", "teacher:unipc:8:auto", "student:lcm:4:auto", "student:lcm:4:fp32",
                  "student:lcm:2:auto", "student:lcm:1:auto", "plain:lcm:2:auto"]
PAPER_SETTINGS = ["teacher:plms:250:fp32", "teacher:unipc:8:auto", "student:lcm:4:auto", "student:lcm:4:fp32",
                  "student:lcm:4:bf16", "student:lcm:2:auto", "student:lcm:1:auto"]
STAGES = ("condition", "unet", "decode")


def run_setting(pipe, fmri, scheduler, steps, precision, seed, num_samples, batch_size):
    """(images, seconds per image, per-stage seconds per image, the stages' precision)."""
    timings = {}
    t0 = time.perf_counter()
    images = pipe(fmri, num_samples=num_samples, num_inference_steps=steps, scheduler=scheduler, seed=seed,
                  batch_size=batch_size, precision=precision, timings=timings)
    n = len(fmri) * num_samples
    return images, (time.perf_counter() - t0) / n, {s: timings[s] / n for s in STAGES}, timings["precision"]


def warm(pipe, fmri, scheduler, precision, num_samples, batch_size):
    """Run once so that the auto precision probe (cached per batch size) and one-off allocations are not timed."""
    from mindvis.pipelines.mindvis_pipeline import auto_batch_size

    batch_size = batch_size or auto_batch_size(pipe.model.image_size, len(fmri) * num_samples)
    per = max(1, -(-batch_size // num_samples))
    pipe(fmri[:per], num_samples=num_samples, num_inference_steps=1 if scheduler == "lcm" else 2, scheduler=scheduler,
         batch_size=batch_size, precision=precision)


def fmt_stages(st):
    return " / ".join(f"{st[s]:.4f}" for s in STAGES)


def precision_errors(pipe, fmri, latents_shape, seed=0) -> list[str]:
    """Each stage in bf16 against fp32 on the same inputs: conditioning (relative error of the context tokens), one
    UNet step (relative error of the predicted noise), decoding (mean / max absolute error of the images in [0, 1])."""
    from mindvis.pipelines.precision import autocast

    m, dev = pipe.model, pipe.device
    g = torch.Generator().manual_seed(seed)
    fmri = fmri.to(dev)
    fmri = fmri.unsqueeze(1) if fmri.ndim == 2 else fmri
    z = torch.randn((len(fmri), *latents_shape[1:]), generator=g).to(dev)
    rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
    rows = []
    with torch.no_grad():
        c32, e32 = m.condition(fmri)
        with autocast(dev, torch.bfloat16):
            c16, e16 = m.condition(fmri)
        rows.append(f"| conditioning (context tokens) | {rel(c16, c32):.2e} relative |")
        t = torch.full((len(z),), 500, device=dev)
        n32 = m.predict_noise(z, t, c32, e32)
        with autocast(dev, torch.bfloat16):
            n16 = m.predict_noise(z, t, c32, e32)
        rows.append(f"| one UNet step (predicted noise, t = 500) | {rel(n16, n32):.2e} relative |")
        d32 = (m.decode_latents(z) + 1) / 2
        d16 = (m.decode_latents(z, torch.bfloat16) + 1) / 2
        err = (d16 - d32).abs()
        rows.append(f"| decoding (images in [0, 1]) | mean {err.mean():.2e}, max {err.max():.2e} absolute |")
    return rows


def synthetic(args) -> None:
    from mindvis.world import SyntheticWorldConfig
    from mindvis.evaluation import evaluate
    from mindvis.evaluation.classifiers import load_classifier
    from mindvis.models.dc_ldm import DCLDM
    from mindvis.pipelines import MindVisPipeline
    from mindvis.pipelines.sample_cli import _truth_images, resolve_model_dir, split_from_run

    dirs = {"teacher": resolve_model_dir(args.teacher), "student": resolve_model_dir(args.student)}
    pipes = {k: MindVisPipeline.from_pretrained(d, args.device) for k, d in dirs.items()}
    m = pipes["teacher"].model
    pipes["plain"] = MindVisPipeline(DCLDM(m.unet, m.vae, m.conditioner, m.scheduler_config,
                                           {"original_inference_steps": 50}))
    split, world = split_from_run(dirs["teacher"], args.split)
    truth = torch.from_numpy(_truth_images(split, pipes["teacher"].model.image_size)).permute(0, 3, 1, 2).float() / 255
    classifier = load_classifier("synthetic", world_cfg=SyntheticWorldConfig(**world), image_size=truth.shape[-1])
    fmri = torch.from_numpy(split.fmri)
    settings = [s.split(":") for s in args.settings]
    for who, sched, _, prec in settings:
        warm(pipes[who], fmri, sched, prec, args.num_samples, args.batch_size)
    rows, results, base = [], {}, None
    for who, sched, steps, prec in settings:
        per_seed = []
        for seed in args.seeds:
            images, sec, stages, chosen = run_setting(pipes[who], fmri, sched, int(steps), prec, seed, args.num_samples,
                                                      args.batch_size)
            rep = evaluate(images, truth, classifier, metrics=("nway", "pcc"), seed=seed)["metrics"]
            per_seed.append({"s_per_image": sec, "nway": rep["50way_top1_acc"]["mean"],
                             "pcc_id": rep["pcc_identification"]["mean"], "stages": stages, "precision": chosen})
        key = ":".join((who, sched, steps, prec))
        results[key] = per_seed
        agg = {k: (np.mean([r[k] for r in per_seed]), np.std([r[k] for r in per_seed]))
               for k in ("s_per_image", "nway", "pcc_id")}
        stages = {s: float(np.mean([r["stages"][s] for r in per_seed])) for s in STAGES}
        base = base or agg["s_per_image"][0]
        chosen = per_seed[0]["precision"]
        prec_text = prec if prec != "auto" else "auto (" + "/".join(chosen[s] for s in STAGES) + ")"
        rows.append(f"| {who} | {sched} | {steps} | {prec_text} | {agg['s_per_image'][0]:.4f} | "
                    f"{base / agg['s_per_image'][0]:.1f}x | {fmt_stages(stages)} | "
                    f"{100 * agg['nway'][0]:.1f} ± {100 * agg['nway'][1]:.1f} % | "
                    f"{agg['pcc_id'][0]:.3f} ± {agg['pcc_id'][1]:.3f} |")
        print(rows[-1], flush=True)
    errs = precision_errors(pipes["student"], fmri[:10],
                            (1, pipes["student"].model.unet.config.in_channels,
                             pipes["student"].model.unet.config.sample_size, pipes["student"].model.unet.config.sample_size))
    head = [f"# PLMS 250 against the fast default on the {args.split} split ({len(fmri)} fMRI x {args.num_samples} "
            f"samples; {device_label(args.device)}; torch {torch.__version__}; batch {args.batch_size or 'auto'}; one "
            "process)", "",
            f"Teacher: {dirs['teacher']}. Student: {dirs['student']}. Mean over seeds {args.seeds} of the starting noise "
            "± std over seeds. Chance: 50-way 2 %, identification 0.5. Stage columns: seconds per image spent in "
            "conditioning / UNet steps / decoding; auto: the type each stage got from the measured probe. Model plain: the "
            "teacher's own UNet sampled with LCM (no distillation), for reference.", "",
            "| model | scheduler | steps | precision | s / image | speed-up | condition / UNet / decode s | "
            "50-way top-1 | PCC identification |", "|---|---|---|---|---|---|---|---|---|"]
    tail = ["", "bf16 against fp32, each stage alone on the same inputs (student):", "", "| stage | error |", "|---|---|",
            *errs]
    Path(args.out).write_text("\n".join(head + rows + tail) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def paper_size(args) -> None:
    from bench_finetune import build

    from mindvis.models.dc_ldm import DCLDM
    from mindvis.pipelines import MindVisPipeline

    torch.manual_seed(0)
    model, voxels, batch, size = build(args.arch)
    model = model.to(args.device).eval()
    pipes = {"teacher": MindVisPipeline(model),
             "student": MindVisPipeline(DCLDM(model.unet, model.vae, model.conditioner, model.scheduler_config,
                                              {"original_inference_steps": 50}))}
    fmri = torch.randn(batch, voxels, generator=torch.Generator().manual_seed(0))
    settings = [s.split(":") for s in args.settings]
    for who, sched, _, prec in settings:
        if prec == "auto":
            warm(pipes[who], fmri, sched, prec, 1, batch)
    rows, base, raw = [], None, {}
    for who, sched, steps, prec in settings:
        steps = int(steps)
        if steps > 8:  # extrapolated: fixed cost + steps x per-step cost, from runs at 2 and 4 steps
            t = {k: run_setting(pipes[who], fmri, sched, k, prec, 0, 1, batch) for k in (2, 4)}
            per_step = (t[4][2]["unet"] - t[2][2]["unet"]) / 2
            stages = {**t[2][2], "unet": steps * per_step}
            total = sum(stages.values())
            chosen, how = t[2][3], "extrapolated"
        else:
            _, total, stages, chosen = run_setting(pipes[who], fmri, sched, steps, prec, 0, 1, batch)
            how = "measured"
        base = base or total
        raw[f"{who}:{sched}:{steps}:{prec}"] = {"s_per_image": total, "stages": stages, "precision": chosen}
        prec_text = prec if prec != "auto" else "auto (" + "/".join(chosen[s] for s in STAGES) + ")"
        rows.append(f"| {who} | {sched} | {steps} | {prec_text} | {stages['condition']:.3f} | {stages['unet']:.3f} | "
                    f"{stages['decode']:.3f} | {total:.2f} | {base / total:.1f}x | {how} |")
        print(rows[-1], flush=True)
    errs = precision_errors(pipes["student"], fmri, (1, 3, 64, 64))
    Path(args.out).write_text("\n".join([
        f"# Sampling time at paper size ({args.device}: {device_label(args.device)}; torch {torch.__version__}; "
        f"random weights, {size} px, batch {batch}; one process)", "",
        "Seconds per image, split into conditioning (the paper SC-MBM and the mappers, once per fMRI), UNet steps and "
        "VQ-f4 decoding. The student has the teacher's architecture (its time does not depend on its weights).", "",
        "| model | scheduler | steps | precision | condition s | UNet s | decode s | s / image | speed-up | |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "bf16 against fp32, each stage alone on the same inputs (random weights):", "", "| stage | error |", "|---|---|",
        *errs, ""]))
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="a mindvis-finetune run on the synthetic world (uses best/)")
    p.add_argument("--student", help="a mindvis-distill run of that teacher (uses best/)")
    p.add_argument("--split", default="test", choices=["val", "test", "test-trials"])
    p.add_argument("--settings", nargs="+", default=None, help="model:scheduler:steps:precision ... (model: teacher, "
                                                               "student or plain: the teacher's UNet sampled with "
                                                               "LCM); the first is the speed-up's base")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None, help="images denoised at once, the same for every setting "
                                                                "(default: mindvis-sample's automatic batch)")
    p.add_argument("--paper-size", action="store_true", help="time the paper-size architecture (random weights)")
    p.add_argument("--arch", default="paper", choices=["paper", "synthetic"],
                   help="--paper-size: the architecture (synthetic: the synthetic preset's, for a quick check)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench/results/fast_test.md")
    args = p.parse_args()
    if args.paper_size:
        args.settings = args.settings or PAPER_SETTINGS
        return paper_size(args)
    if not (args.teacher and args.student):
        p.error("--teacher and --student are required (or --paper-size)")
    args.settings = args.settings or SYNTH_SETTINGS
    synthetic(args)


if __name__ == "__main__":
    main()
