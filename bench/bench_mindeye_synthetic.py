"""MindEye1 and MindEye2 (the -synthetic recipes) next to ridge, mlp and mlp-shared on the same synthetic NSD.

One command writes the world (``mindvis-synth --parts nsd nsd_subjects=3``: three subjects, 2 sessions of 750 trials,
500 nsdgeneral voxels, 50 shared test images seen 3 times), prepares every subject (``mindvis-prep nsd``) and runs,
for each seed, every arm on subject 1; the test set (the 50 shared images) is scored once per run:

* ridge, mlp: ``mindvis-align --config synthetic --dataset nsd`` (the synthetic preset's sizes) on the pooled
  ``synthetic`` target and on ``synthetic-tokens`` (flattened); the ridge penalty by 5-fold cross-validation on
  training data, the mlp's epoch on validation top-1 (10 % of the training images carved out);
* mlp-shared: one adapter per subject into the mlp (scaling's subjects axis), trained on subjects 1-3, the epoch
  selected on subject 1's validation;
* mindeye1: ``--recipe mindeye1-synthetic`` (the last epoch, as the reference; all training images);
* mindeye2: ``--recipe mindeye2-synthetic`` on subjects 2 and 3 (multi-subject batches), then subject 1 as a new
  subject fine-tuned from it (every parameter; the reference's flow); seconds are the two runs together. Also the
  single-subject run from scratch (``mindeye2, subject 1 alone``), the new subject's adapter alone fine-tuned from
  the same multi-subject run, and MindEye1 without its image augmentation.

The machine's load average is recorded with every run. A rerun reuses finished runs.

    python bench/bench_mindeye_synthetic.py [--seeds 0 1 2] [--work runs/bench_mindeye] \
        [--out bench/results/mindeye_synthetic.md]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from timing import device_label

WORLD = ["nsd_subjects=3"]
METRICS = [("top1_brain_to_image", "top-1 brain→image"), ("top1_image_to_brain", "top-1 image→brain"),
           ("top5_brain_to_image", "top-5 brain→image")]


def prepare(work: Path) -> list[Path]:
    from mindvis.commands import synth_main
    from mindvis.data_prep.cli import main as prep_main

    subjects = [work / "nsd" / f"subj{s:02d}" for s in (1, 2, 3)]
    if not (work / "world" / "NSD").is_dir():
        assert synth_main(["--out", str(work / "world"), "--parts", "nsd", *WORLD]) == 0
    for s in subjects:
        if not (s / "meta.json").is_file():
            assert prep_main(["nsd", "--root", str(work / "world" / "NSD"), "--subject", s.name, "--out", str(s)]) == 0
    return subjects


def cpu_seconds() -> float:
    """CPU time of this process (user + system): what the run costs whatever else loads the machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def align_run(work: Path, name: str, args: list[str]) -> dict:
    """One mindvis-align run (reused when finished): its report, with the load average around it."""
    from mindvis.align.cli import main as align_main

    done = work / "runs" / name / "retrieval.json"
    meta = work / "runs" / name / "bench.json"
    if not done.is_file():
        load0, t0, cpu0 = os.getloadavg()[0], time.time(), cpu_seconds()
        rc = align_main([*args, "--out", str(work / "runs"), "--run-name", name])
        if rc:
            raise SystemExit(f"{name} failed ({rc})")
        meta.write_text(json.dumps({"load_before": load0, "load_after": os.getloadavg()[0],
                                    "wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu_seconds() - cpu0, 1),
                                    "args": args}))
    report = json.loads(done.read_text())
    return report | {"bench": json.loads(meta.read_text()) if meta.is_file() else {}}


def shared_run(work: Path, subjects: list[Path], seed: int) -> dict:
    """mlp-shared on the three subjects, selected on subject 1's validation, tested on subject 1."""
    import torch

    from mindvis.align.config import AlignConfig
    from mindvis.align.data import embed_images, split_test_trials
    from mindvis.align.decoders import decode
    from mindvis.align.mindeye_data import load_subject
    from mindvis.align.scoring import score_split
    from mindvis.align.training import train_subjects, validation_scores
    from mindvis.config import build_config
    from mindvis.configs import preset_path
    from mindvis.models.brain_decoders import SharedMLP, SharedMLPConfig
    from mindvis.utils.io import atomic_write_json

    out = work / "runs" / f"mlp-shared-s{seed}" / "retrieval.json"
    if out.is_file():
        return json.loads(out.read_text())
    load0, t0, cpu0 = os.getloadavg()[0], time.time(), cpu_seconds()
    c = build_config(AlignConfig, preset_path("align", "synthetic"), ["data.dataset=nsd", f"data.path={subjects[0]}",
                                                                      f"train.seed={seed}"])
    data = [load_subject(c)] + [load_subject(c, str(s), 0.0) for s in subjects[1:]]
    names = [s.name for s in subjects]
    first = data[0]
    test, _ = split_test_trials(first.test)
    emb = embed_images(c, {**{f"train:{n}": d.train.images for n, d in zip(names, data)}, "val": first.val.images,
                           "test": test.images})
    d, tc = c.decoder, c.train
    torch.manual_seed(seed)
    model = SharedMLP(SharedMLPConfig({n: x.train.fmri.shape[-1] for n, x in zip(names, data)}, emb["test"].shape[1],
                                      d.hidden, d.hidden, d.blocks, d.input_dropout, d.block_dropout,
                                      d.projector_hidden))
    val = lambda m: validation_scores(m.for_subject(names[0]), first.val.fmri, emb["val"], c,
                                      c.loss.clip_temperature)["val_top1"]
    fit = train_subjects(model, {n: (x.train.fmri, emb[f"train:{n}"]) for n, x in zip(names, data)}, tc.epochs, tc.lr,
                         tc.batch_size, c.loss.contrastive_weight, c.loss.clip_temperature, tc.weight_decay, seed, val,
                         tc.val_every)
    report = {"test": score_split(decode(model.for_subject(names[0]), test.fmri), emb["test"], c.eval, seed),
              "best_epoch": fit["best_epoch"], "seconds": round(time.time() - t0, 1), "target": "synthetic",
              "selection": f"epoch {fit['best_epoch']} of {tc.epochs} by val_top1 on validation",
              "bench": {"load_before": load0, "load_after": os.getloadavg()[0],
                        "cpu_s": round(cpu_seconds() - cpu0, 1)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    return report


def arms(subjects: list[Path], seed: int) -> list[tuple[str, str, list[list[str]]]]:
    s1, s2, s3 = (str(s) for s in subjects)
    base = ["--config", "synthetic", "--dataset", "nsd", "--data-path", s1, f"train.seed={seed}"]
    me = [f"train.seed={seed}"]
    return [
        ("ridge", "synthetic", [base + ["--decoder", "ridge", "--target", "synthetic"]]),
        ("ridge", "synthetic-tokens", [base + ["--decoder", "ridge", "--target", "synthetic-tokens"]]),
        ("mlp", "synthetic", [base + ["--decoder", "mlp", "--target", "synthetic"]]),
        ("mlp", "synthetic-tokens", [base + ["--decoder", "mlp", "--target", "synthetic-tokens"]]),
        ("mindeye1", "synthetic-tokens", [["--recipe", "mindeye1-synthetic", "--data-path", s1, *me]]),
        ("mindeye2, subject 1 alone", "synthetic-tokens", [["--recipe", "mindeye2-synthetic", "--data-path", s1, *me]]),
        ("mindeye2, subjects 2-3 then subject 1 (fine-tuned)", "synthetic-tokens",
         [["--recipe", "mindeye2-synthetic", "--data-path", s2, f"mindeye.subjects=[{s3}]", *me],
          ["--recipe", "mindeye2-synthetic", "--data-path", s1, "mindeye.init={prev}", *me]]),
        ("mindeye1, no image augmentation", "synthetic-tokens",
         [["--recipe", "mindeye1-synthetic", "--data-path", s1, "mindeye.image_augment=false", *me]]),
        ("mindeye2, subjects 2-3 then subject 1 (adapter only)", "synthetic-tokens",
         [["--recipe", "mindeye2-synthetic", "--data-path", s2, f"mindeye.subjects=[{s3}]", *me],
          ["--recipe", "mindeye2-synthetic", "--data-path", s1, "mindeye.init={prev}", "mindeye.finetune=adapter",
           *me]]),
    ]


def run_name(arm: str, target: str, seed: int, k: int) -> str:
    short = {"mindeye2, subject 1 alone": "mindeye2-single",
             "mindeye2, subjects 2-3 then subject 1 (fine-tuned)": "mindeye2-ft",
             "mindeye1, no image augmentation": "mindeye1-noaug",
             "mindeye2, subjects 2-3 then subject 1 (adapter only)": "mindeye2-adapter"}.get(arm, arm)
    if short == "mindeye2-adapter" and k == 0:
        short = "mindeye2-ft"  # the same multi-subject run
    return f"{short}-{target}-s{seed}" + (f"-{k}" if k else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", default="runs/bench_mindeye", help="world, prepared subjects and run folders")
    p.add_argument("--out", default="bench/results/mindeye_synthetic.md")
    p.add_argument("--only", nargs="*", help="run only these arms (names as in the table)")
    p.add_argument("--note", default="", help="a sentence appended to the table's notes")
    p.add_argument("--collect-only", action="store_true",
                   help="run nothing: the table from the finished runs of --seeds (an arm lists the seeds it has)")
    args = p.parse_args()

    work = Path(args.work)
    subjects = prepare(work)
    results: dict[tuple[str, str], list[dict]] = {}
    for seed in args.seeds:
        for arm, target, runs in arms(subjects, seed):
            if args.only and arm not in args.only:
                continue
            if args.collect_only and not all((work / "runs" / run_name(arm, target, seed, k) / "retrieval.json")
                                             .is_file() for k in range(len(runs))):
                continue
            reports, prev = [], None
            for k, flags in enumerate(runs):
                flags = [f.replace("{prev}", str(prev)) for f in flags]
                name = run_name(arm, target, seed, k)
                reports.append(align_run(work, name, flags))
                prev = work / "runs" / name
            final = reports[-1] | {"seed": seed, "seconds_total": sum(r["seconds"] for r in reports),
                                   "cpu_total": sum(r["bench"].get("cpu_s", float("nan")) for r in reports),
                                   "loads": [r["bench"].get("load_before") for r in reports] +
                                            [r["bench"].get("load_after") for r in reports]}
            results.setdefault((arm, target), []).append(final)
            print(f"{arm} ({target}) seed {seed}: top-1 {final['test']['top1_brain_to_image']['value']:.3f}, "
                  f"{final['seconds_total']:.0f} s", flush=True)
        shared_done = (work / "runs" / f"mlp-shared-s{seed}" / "retrieval.json").is_file()
        if (not args.only or "mlp-shared" in args.only) and (shared_done or not args.collect_only):
            report = shared_run(work, subjects, seed) | {"seed": seed}
            results.setdefault(("mlp-shared", "synthetic"), []).append(report)
    loads = [x for rs in results.values() for r in rs for x in (r.get("loads") or [r.get("bench", {}).get(
        "load_before"), r.get("bench", {}).get("load_after")]) if x is not None]
    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [f"**MindEye recipes and the earlier decoders on a synthetic NSD** ({device_label('cpu')}"
             + (f", OMP_NUM_THREADS={threads}" if threads else "") + ")", "",
             f"Subject 1 of `mindvis-synth --parts nsd {' '.join(WORLD)}`: 1,350 training trials (450 images x 3), "
             "500 voxels; test: the 50 shared images (3 repetitions each). ridge and mlp hold out 10 % of the "
             "training images for selection (1,215 training trials) and read the voxels zero-padded to 512; "
             "mlp-shared also trains on subjects 2 and 3; the MindEye recipes train on all 1,350 trials and use the "
             "last epoch. Seeds "
             f"{args.seeds} (each row lists the seeds it ran), mean ± std over those seeds (population std; one seed: "
             "its value), "
             "chance in parentheses; test scored once per run. "
             + (f"Load average during the runs {min(loads):.1f}-{max(loads):.1f} on 2 cores shared with other jobs "
                "(wall times are inflated by it)." if loads else ""), "",
             "| decoder | target | seeds | " + " | ".join(label for _, label in METRICS) +
             " | prior samples top-1 | selection | seconds per run | CPU seconds per run |",
             "|---|---|---|" + "---|" * (len(METRICS) + 4)]
    rows = []
    for (arm, target), reports in results.items():
        cells, row = [], {"decoder": arm, "target": target, "seeds": [r.get("seed") for r in reports]}
        for key, _ in METRICS:
            v = np.array([r["test"][key]["value"] for r in reports])
            ch = reports[0]["test"][key]["chance"]
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "") + f" ({ch:.3f})")
            row[key] = {"values": v.tolist(), "mean": float(v.mean()), "std": float(v.std()), "chance": ch}
        pr = [r["test_prior"]["top1_brain_to_image"] for r in reports if "test_prior" in r]
        if pr:
            v = np.array([x["value"] for x in pr])
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "") + f" ({pr[0]['chance']:.3f})")
            row["prior_top1_brain_to_image"] = {"values": v.tolist(), "mean": float(v.mean()), "std": float(v.std()),
                                                "chance": pr[0]["chance"]}
        else:
            cells.append("-")
        sel = reports[0].get("selection", "")
        cells.append("last epoch" if sel.startswith("the last") else "cross-validation" if "cross-validation" in sel
                     else "validation" if "validation" in sel else sel)
        secs = [r.get("seconds_total", r["seconds"]) for r in reports]
        cpu = [r.get("cpu_total", r.get("bench", {}).get("cpu_s", float("nan"))) for r in reports]
        cells += [f"{np.mean(secs):.0f}", f"{np.mean(cpu):.0f}"]
        row |= {"selection": sel, "seconds": secs, "cpu_seconds": cpu}
        rows.append(row)
        lines.append(f"| {arm} | {target} | {', '.join(str(r.get('seed')) for r in reports)} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Seconds: each run's own wall time (data reading, cached targets, training, test) on the loaded "
                  "machine; CPU seconds: the process's user + system time for the same work (with one torch thread, "
                  "about the wall time a quiet machine needs with one core). The world, its classifier and the "
                  "targets are made once before (first use only). mindeye2 fine-tuned / adapter only: the "
                  "multi-subject run (shared by both) and the fine-tuning run together."
              + (f" {args.note}" if args.note else "")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"world": WORLD, "seeds": args.seeds, "device": device_label("cpu"), "omp_num_threads": threads,
         "load_average": [min(loads), max(loads)] if loads else None, "note": args.note, "rows": rows},
        indent=1) + "\n")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
