"""The decoders of ``mindvis-align`` side by side on the synthetic world: test retrieval over seeds.

Each (decoder, seed) is one ``mindvis-align --dataset synthetic`` run with the shipped preset; the seed changes
the validation classes carved from training, the initialisation and the batch order. Selection (the ridge penalty
by cross-validation, the epoch of the deep decoders) uses training and validation data only; the test set is
scored once per run. Writes a Markdown table with mean ± std over seeds and the chance level.

    python bench/bench_align.py --encoder runs/pretrain/RUN [--seeds 0 1 2] [--out bench/results/align_synthetic.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from timing import device_label

METRICS = [("top1_brain_to_image", "top-1 brain→image"), ("top5_brain_to_image", "top-5 brain→image"),
           ("top1_image_to_brain", "top-1 image→brain"), ("relative_median_rank", "relative median rank"),
           ("embedding_correlation", "embedding r"), ("two_way_identification", "2-way identification")]


def main() -> None:
    from mindvis.align.cli import main as align_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="stage-A run for the pretrained mbm arm (mindvis-pretrain)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default="runs/bench_align", help="folder for the run folders")
    p.add_argument("--out", default="bench/results/align_synthetic.md")
    args = p.parse_args()
    arms = [("ridge", ["--decoder", "ridge"]), ("mlp", ["--decoder", "mlp"]),
            ("mbm (stage-A encoder)", ["--decoder", "mbm", "--encoder", args.encoder]),
            ("mbm (random encoder)", ["--decoder", "mbm", "--encoder", "random"])]
    results = {}
    for name, flags in arms:
        for seed in args.seeds:
            run = f"{name.split()[0]}-{'pre' if 'stage-A' in name else 'rand' if 'random' in name else 'x'}-s{seed}"
            done = Path(args.runs) / run / "retrieval.json"
            if not done.is_file():  # a rerun reuses finished runs
                rc = align_main(["--dataset", "synthetic", *flags, "--out", args.runs, "--run-name", run,
                                 f"train.seed={seed}"])
                if rc:
                    raise SystemExit(f"{name} seed {seed} failed ({rc})")
            report = json.loads(done.read_text())
            results.setdefault(name, []).append(report)
    lines = [f"# mindvis-align on the synthetic world ({device_label('cpu')})", "",
             f"Test set: the 50 held-out test images (5-repetition averages); seeds {args.seeds}; mean ± std over "
             "seeds. Selection on training/validation data only.", "",
             "| decoder | " + " | ".join(label for _, label in METRICS) + " | seconds per run (cached world and targets) |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    chance = None
    for name, reports in results.items():
        cells = []
        for key, _ in METRICS:
            v = np.array([r["test"][key]["value"] for r in reports])
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
            chance = chance or {k: reports[0]["test"][k]["chance"] for k, _ in METRICS}
        cells.append(f"{np.mean([r['seconds'] for r in reports]):.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| chance | " + " | ".join("-" if chance[k] is None else f"{chance[k]:.3f}" for k, _ in METRICS)
                 + " | |")
    lines += ["", "Validation (selection data) for the same runs, top-1 brain→image:", ""]
    for name, reports in results.items():
        v = np.array([r["val"]["top1_brain_to_image"]["value"] for r in reports])
        lines.append(f"- {name}: {v.mean():.3f} ± {v.std():.3f} (chance {reports[0]['val']['top1_brain_to_image']['chance']:.3f})")
    rows = {name: [r["averaging"] for r in reports] for name, reports in results.items()}
    lines += ["", "Test-time averaging, test top-1 brain→image by repetitions averaged (mean over seeds):", "",
              "| decoder | " + " | ".join(str(c["repetitions"]) for c in next(iter(rows.values()))[0]) + " |",
              "|---|" + "---|" * len(next(iter(rows.values()))[0])]
    for name, curves in rows.items():
        means = np.mean([[c["top1"] for c in curve] for curve in curves], axis=0)
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
