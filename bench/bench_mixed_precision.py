"""Training in reduced precision on the synthetic world: the real commands at fp32 and bf16, side by side.

Runs ``mindvis-pretrain --data synthetic`` and ``mindvis-finetune --dataset synthetic`` for a few epochs with
``train.mixed_precision=no`` and ``=bf16`` (accelerate's autocast), one after the other, each in its own process
(accelerate's state is per process), and
reports wall time, the last epoch's training loss and the held-out figure each command ends with (stage A: held-out
masked-patch MSE; stage B: test diffusion loss). Paper-size steps: ``bench_pretrain.py --precision bf16`` and
``bench_finetune.py --precision bf16``.

    python bench/bench_mixed_precision.py --encoder runs/pretrain/RUN [--epochs 20] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from timing import device_label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="stage-A run for stage B")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--runs", default="runs/bench_precision")
    p.add_argument("--out", default="bench/results/mixed_precision_cpu.md")
    args = p.parse_args()
    rows = []
    for stage, cli, extra in (("stage A (SC-MBM, synthetic preset)", "mindvis.pretrain.cli", ["--data", "synthetic"]),
                              ("stage B (DC-LDM, synthetic preset)", "mindvis.finetune.cli",
                               ["--dataset", "synthetic", "--encoder", args.encoder, "train.val_every=1000",
                                "train.checkpoint_every=1000"])):
        for precision in ("no", "bf16"):
            name = f"{'a' if 'A' in stage else 'b'}-{precision}"
            t0 = time.perf_counter()
            rc = subprocess.run([sys.executable, "-m", cli, *extra, "--output-dir", args.runs, "--run-name", name,
                                 f"train.epochs={args.epochs}", f"train.mixed_precision={precision}"]).returncode
            seconds = time.perf_counter() - t0
            if rc:
                raise SystemExit(f"{stage} {precision} failed ({rc})")
            summary = json.loads((Path(args.runs) / name / "summary.json").read_text())
            if "A" in stage:
                from mindvis.training import STATE_NAME, latest_checkpoint, load_training_state

                held = f"held-out masked MSE {summary['holdout']['model']['mse']:.4f}"
                state = load_training_state(latest_checkpoint(Path(args.runs) / name) / STATE_NAME)
                last = state["history"][-1]["loss"]
            else:
                held = f"test diffusion loss {summary['test']['loss']:.4f}"
                last = summary.get("last_loss")
            rows.append(f"| {stage} | {precision} | {args.epochs} | {seconds:.0f} | {last:.4f} | {held} |")
            print(rows[-1], flush=True)
    Path(args.out).write_text("\n".join([
        f"# Training in reduced precision ({device_label('cpu')}): the synthetic presets for {args.epochs} epochs", "",
        "| stage | mixed precision | epochs | seconds (whole command) | last training loss | held-out |",
        "|---|---|---|---|---|---|", *rows, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
