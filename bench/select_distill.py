"""Choose the distillation's settings and the student's steps on the validation split (never the test set).

For each guidance scale and number of teacher solver steps, ``mindvis-distill`` distils the teacher (runs kept under
``--runs``; a finished run is reused), then its student samples the run's validation split at 1, 2 and 4 steps over
seeds of the starting noise; the teacher's PLMS 250 (fp32) is scored the same way. A setting has the teacher's
quality when its 50-way top-1 and PCC identification are each at least the teacher's mean minus the teacher's spread
over seeds (the rule that chose UniPC 8, bench/results/samplers_val*.md); the choice is the fewest steps with that
quality, then the higher PCC identification.

    python bench/select_distill.py --teacher runs/demo/finetune --runs runs/distill-select \
        --guidance 1 1.5 2 --solver-steps 25 50 --out bench/results/distill_val.md [key=value ...]

Extra ``key=value`` go to every distillation run (e.g. train.epochs=40).
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch


def score(pipe, fmri, truth, classifier, scheduler, steps, seeds, num_samples, batch_size, precision="fp32"):
    from mindvis.evaluation import evaluate

    out = []
    for seed in seeds:
        images = pipe(fmri, num_samples=num_samples, num_inference_steps=steps, scheduler=scheduler, seed=seed,
                      batch_size=batch_size, precision=precision)
        rep = evaluate(images, truth, classifier, metrics=("nway", "pcc"), seed=seed)["metrics"]
        out.append({"nway": rep["50way_top1_acc"]["mean"], "pcc_id": rep["pcc_identification"]["mean"]})
    return {k: (float(np.mean([r[k] for r in out])), float(np.std([r[k] for r in out]))) for k in out[0]}


def main() -> None:
    from mindvis.world import SyntheticWorldConfig
    from mindvis.evaluation.classifiers import load_classifier
    from mindvis.finetune.distill import main as distill_main
    from mindvis.pipelines import MindVisPipeline
    from mindvis.pipelines.sample_cli import _truth_images, resolve_model_dir, split_from_run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a mindvis-finetune run on the synthetic world")
    p.add_argument("--runs", default="runs/distill-select", help="parent folder of the distillation runs")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--solver-steps", type=int, nargs="+", default=[25, 50])
    p.add_argument("--settings", nargs="+", default=None, metavar="W:N",
                   help="explicit (guidance, solver steps) pairs instead of --guidance x --solver-steps")
    p.add_argument("--undistilled", type=int, default=0, metavar="N",
                   help="also score the teacher's own UNet sampled with LCM (solver steps N) at --steps: what "
                        "distillation adds; a reference row, never a candidate")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="student steps scored")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None, help="default: mindvis-sample's automatic batch")
    p.add_argument("--out", default="bench/results/distill_val.md")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()

    teacher_dir = resolve_model_dir(args.teacher)
    teacher = MindVisPipeline.from_pretrained(teacher_dir)
    split, world = split_from_run(teacher_dir, "val")
    truth = torch.from_numpy(_truth_images(split, teacher.model.image_size)).permute(0, 3, 1, 2).float() / 255
    classifier = load_classifier("synthetic", world_cfg=SyntheticWorldConfig(**world), image_size=truth.shape[-1])
    fmri = torch.from_numpy(split.fmri)
    kw = dict(seeds=args.seeds, num_samples=args.num_samples, batch_size=args.batch_size)
    base = score(teacher, fmri, truth, classifier, "plms", 250, **kw)
    print(f"teacher PLMS 250: {base}", flush=True)
    rows, results = [], {"teacher_plms250": base, "students": {}, "undistilled": {}}
    if args.undistilled:
        from mindvis.models.dc_ldm import DCLDM

        m = teacher.model
        plain = MindVisPipeline(DCLDM(m.unet, m.vae, m.conditioner, m.scheduler_config,
                                      {"original_inference_steps": args.undistilled}))
        for k in args.steps:
            r = score(plain, fmri, truth, classifier, "lcm", k, **kw)
            ok = all(r[m][0] >= base[m][0] - base[m][1] for m in ("nway", "pcc_id"))
            results["undistilled"][str(k)] = {**r, "equal_quality": ok}
            print(f"undistilled {k}: {r}", flush=True)
    settings = ([tuple(float(x) if i == 0 else int(x) for i, x in enumerate(s.split(":"))) for s in args.settings]
                if args.settings else list(itertools.product(args.guidance, args.solver_steps)))
    for w, n in settings:
        name = f"w{w:g}-n{n}"
        run = Path(args.runs) / name
        if not (run / "summary.json").is_file():
            rc = distill_main(["--teacher", str(args.teacher), "--out", args.runs, "--run-name", name,
                               f"distill.guidance={w}", f"distill.solver_steps={n}", *args.overrides])
            if rc != 0:
                raise SystemExit(f"mindvis-distill failed for {name}")
        summary = json.loads((run / "summary.json").read_text())
        student = MindVisPipeline.from_pretrained(resolve_model_dir(run))
        for k in args.steps:
            r = score(student, fmri, truth, classifier, "lcm", k, **kw)
            ok = all(r[m][0] >= base[m][0] - base[m][1] for m in ("nway", "pcc_id"))
            results["students"][f"{name}:{k}"] = {**r, "equal_quality": ok, "epoch": summary["selected_epoch"]}
            rows.append((k, -r["pcc_id"][0], f"| {w:g} | {n} | {summary['selected_epoch']} | {k} | "
                         f"{100 * r['nway'][0]:.1f} ± {100 * r['nway'][1]:.1f} % | {r['pcc_id'][0]:.3f} ± "
                         f"{r['pcc_id'][1]:.3f} | {'yes' if ok else 'no'} |", ok, name))
            print(rows[-1][2], flush=True)
    passing = sorted(r for r in rows if r[3])
    choice = passing[0] if passing else None
    lines = [f"# Distillation settings on the validation split ({len(fmri)} fMRI x {args.num_samples} samples, seeds "
             f"{args.seeds})", "",
             f"Teacher: {teacher_dir} (PLMS 250, fp32: 50-way top-1 {100 * base['nway'][0]:.1f} ± "
             f"{100 * base['nway'][1]:.1f} %, PCC identification {base['pcc_id'][0]:.3f} ± {base['pcc_id'][1]:.3f}). "
             f"Students: mindvis-distill with the listed guidance w and teacher solver steps N "
             f"({' '.join(args.overrides) or 'preset settings'}), selected epoch by the run's own validation; "
             "sampled with LCM in fp32. Equal quality: both metrics at least the teacher's mean minus its spread.", "",
             "| guidance w | solver steps N | epoch | student steps | 50-way top-1 | PCC identification | equal quality |",
             "|---|---|---|---|---|---|---|", *[r[2] for r in rows], "",
             *([f"Reference, not a candidate: the teacher's own UNet (no distillation) sampled with LCM "
                f"(solver steps {args.undistilled}):", "",
                "| student steps | 50-way top-1 | PCC identification | equal quality |", "|---|---|---|---|",
                *[f"| {k} | {100 * r['nway'][0]:.1f} ± {100 * r['nway'][1]:.1f} % | {r['pcc_id'][0]:.3f} ± "
                  f"{r['pcc_id'][1]:.3f} | {'yes' if r['equal_quality'] else 'no'} |"
                  for k, r in results["undistilled"].items()], ""] if args.undistilled else []),
             (f"Choice: {choice[4]} at {choice[0]} steps." if choice else "No setting reached the teacher's quality.")]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
