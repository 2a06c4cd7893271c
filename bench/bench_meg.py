"""MEG and EEG decoding on the synthetic world: the README's tables, time-resolved decoding and streaming, in one
command.

The world: ``mindvis-synth``'s defaults (GOD-like images: 400 training images shown once, 50 test images shown 4
times, and the test concepts' 400 other images shown once, held out as the large set; 64 CTF-like sensors at 300 Hz,
2 runs; EEG2: 17 channels at 100 Hz, 2 training repetitions) with two subjects and 10x the default single-trial SNR
(``meg_snr=1 eeg_snr=0.5``, standing in for more data). THINGS-MEG is prepared per subject with ``mindvis-prep
things-meg``'s defaults (and once more with ``--filtering window`` for streaming). Every arm is ``mindvis-align`` with
``configs/align/things-meg-synthetic.yaml`` (the brain module narrowed for CPUs, brainmagick's training: Adam without
decay, ClipLoss, best epoch by validation loss, early stopping after 10 epochs) and the seed as ``train.seed`` (the
validation classes, the initialisation and the batch order). Arms:

* the brain module over both subjects (one model, a subject layer each) and each subject alone (one model per
  subject), both again with the synthetic preset's earlier training (``EARLIER``); ridge over both subjects' trials
  pooled and per subject;
* the same on THINGS-EEG2.

Scores are per subject (its test images among its own; the large set: its held-out trials among its held-out images)
and averaged over the two subjects, then mean ± std over the seeds; chance beside every number. Then ridge per
100-ms window (subject 1, seed 0; ``docs/meg_time_resolved.png``) and ``mindvis-stream`` over subject 1's first run
with a brain module trained on its ``--filtering window`` trials.

    python bench/bench_meg.py [--seeds 0 1 2] [--root runs/bench_meg] [--out bench/results/meg_synthetic.md]

Finished runs are reused by a rerun (delete ``--root`` to measure again).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from timing import device_label

WORLD = {"meeg_subjects": 2, "meg_snr": 1.0, "eeg_snr": 0.5}
METRICS = [("top1_brain_to_image", "top-1"), ("top5_brain_to_image", "top-5"),
           ("relative_median_rank", "median rank"), ("top5_large_set", "top-5, large set"),
           ("relative_median_rank_large_set", "median rank, large set")]
SUBJECTS = (1, 2)
#: the synthetic preset's training before brainmagick's became the default: CLIP's symmetric loss with a learned
#: temperature, AdamW (decay 0.01) at 1e-3 with cosine decay and clipping at 1, batches of 32, 40 epochs, the epoch with
#: the best validation top-1 (every 2 epochs)
EARLIER = ["loss.contrastive=clip", "train.weight_decay=0.01", "train.lr=1e-3", "train.lr_schedule=cosine",
           "train.clip_grad=1.0", "train.batch_size=32", "train.epochs=40", "train.val_every=2",
           "train.select_metric=val_top1", "train.patience=0"]


def timed(fn, *a, **k):
    t = time.time()
    out = fn(*a, **k)
    return out, time.time() - t


def align(args, name: str, flags: list[str]) -> dict:
    from mindvis.align.cli import main as align_main

    done = Path(args.root) / "runs" / name / "retrieval.json"
    if not done.is_file():
        shutil.rmtree(done.parent, ignore_errors=True)
        rc = align_main([*flags, "--config", "things-meg-synthetic", "--output-dir", str(Path(args.root) / "runs"),
                         "--run-name", name, f"data.cache_dir={Path(args.root) / 'cache'}"])
        if rc:
            raise SystemExit(f"{name} failed ({rc})")
    return json.loads(done.read_text())


def cell(reports: list[list[dict]], key: str) -> tuple[str, float | None]:
    """'mean ± std %' over seeds of the per-seed mean over subjects' runs, and the chance (mean over runs)."""
    if key not in reports[0][0]["test"]:
        return "-", None
    per_seed = [np.mean([r["test"][key]["value"] for r in runs]) for runs in reports]
    chance = float(np.mean([r["test"][key]["chance"] for runs in reports for r in runs]))
    return f"{100 * np.mean(per_seed):.1f} ± {100 * np.std(per_seed):.1f} %", chance


def main() -> None:
    from mindvis.data_prep.things_meg import prepare_things_meg
    from mindvis.data_prep.things_meg_settings import MEGSettings
    from mindvis.world import SyntheticWorld, SyntheticWorldConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default="runs/bench_meg", help="world, preparations and run folders")
    p.add_argument("--out", default="bench/results/meg_synthetic.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared machine more threads "
                                                          "than free cores spin instead of computing)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    times = {}
    world = root / "world"
    if not (world / "THINGS-EEG2" / "meta.json").is_file():
        _, times["write world (s)"] = timed(SyntheticWorld(SyntheticWorldConfig(**WORLD)).write, world,
                                            ["things-meg", "things-eeg2"])
    meg, window = root / "prep", root / "prep-window"
    if not all((meg / f"sub-BIGMEG{s}" / "meta.json").is_file() for s in SUBJECTS):
        t = time.time()
        for s in SUBJECTS:
            prepare_things_meg(world / "THINGS-MEG", s, meg / f"sub-BIGMEG{s}")
        times["prepare 2 subjects (s)"] = time.time() - t
    prepare_things_meg(world / "THINGS-MEG", 1, window / "sub-BIGMEG1", MEGSettings(filtering="window"))

    arms = {  # name -> per seed, the runs whose subject scores are averaged
        ("THINGS-MEG", "brain module", "both, one model"): lambda seed: [
            align(args, f"meg-bm-both-s{seed}", ["--dataset", "things-meg", "--data-path", str(meg),
                                                 "--decoder", "brain-module", f"train.seed={seed}"])],
        ("THINGS-MEG", "brain module", "each alone"): lambda seed: [
            align(args, f"meg-bm-sub{s}-s{seed}", ["--dataset", "things-meg", "--data-path", str(meg),
                                                   "--decoder", "brain-module", f"data.subjects=[{s}]",
                                                   f"train.seed={seed}"]) for s in SUBJECTS],
        ("THINGS-MEG", "brain module, earlier training", "both, one model"): lambda seed: [
            align(args, f"meg-bm-old-both-s{seed}", ["--dataset", "things-meg", "--data-path", str(meg),
                                                     "--decoder", "brain-module", f"train.seed={seed}", *EARLIER])],
        ("THINGS-MEG", "brain module, earlier training", "each alone"): lambda seed: [
            align(args, f"meg-bm-old-sub{s}-s{seed}", ["--dataset", "things-meg", "--data-path", str(meg),
                                                       "--decoder", "brain-module", f"data.subjects=[{s}]",
                                                       f"train.seed={seed}", *EARLIER]) for s in SUBJECTS],
        ("THINGS-MEG", "ridge", "both, pooled"): lambda seed: [
            align(args, f"meg-ridge-both-s{seed}", ["--dataset", "things-meg", "--data-path", str(meg),
                                                    "--decoder", "ridge", f"train.seed={seed}"])],
        ("THINGS-MEG", "ridge", "each alone"): lambda seed: [
            align(args, f"meg-ridge-sub{s}-s{seed}", ["--dataset", "things-meg", "--data-path", str(meg),
                                                      "--decoder", "ridge", f"data.subjects=[{s}]",
                                                      f"train.seed={seed}"]) for s in SUBJECTS],
        ("THINGS-EEG2", "brain module", "both, one model"): lambda seed: [
            align(args, f"eeg-bm-both-s{seed}", ["--dataset", "things-eeg2", "--data-path", str(world / "THINGS-EEG2"),
                                                 "--decoder", "brain-module", "data.subjects=[1,2]",
                                                 f"train.seed={seed}"])],
        ("THINGS-EEG2", "ridge", "both, pooled"): lambda seed: [
            align(args, f"eeg-ridge-both-s{seed}", ["--dataset", "things-eeg2", "--data-path",
                                                    str(world / "THINGS-EEG2"), "--decoder", "ridge",
                                                    "data.subjects=[1,2]", f"train.seed={seed}"])],
    }
    results = {k: [fn(seed) for seed in args.seeds] for k, fn in arms.items()}

    # time-resolved ridge (subject 1, seed 0) and streaming
    tr = align(args, "meg-ridge-windows", ["--dataset", "things-meg", "--data-path", str(meg / "sub-BIGMEG1"),
                                           "--decoder", "ridge", "--windows", "0.1:0.05", "train.seed=0"])
    png = root / "runs" / "meg-ridge-windows" / "time_resolved.png"
    Path("docs").mkdir(exist_ok=True)
    shutil.copy(png, "docs/meg_time_resolved.png")
    live = align(args, "meg-bm-window", ["--dataset", "things-meg", "--data-path", str(window / "sub-BIGMEG1"),
                                         "--decoder", "brain-module", "train.seed=0"])
    from mindvis.pipelines.stream import main as stream_main

    live_ridge = align(args, "meg-ridge-window", ["--dataset", "things-meg", "--data-path", str(window / "sub-BIGMEG1"),
                                                  "--decoder", "ridge", "train.seed=0"])
    recording = sorted((world / "THINGS-MEG" / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif"))[0]
    streams = {}
    for name in ("meg-bm-window", "meg-ridge-window"):
        rc = stream_main(["--model", str(root / "runs" / name), "--input", str(recording), "--chunk", "0.1",
                          "--out", str(root / "stream" / name)])
        if rc:
            raise SystemExit(f"mindvis-stream failed ({rc})")
        streams[name] = json.loads((root / "stream" / name / "stream.json").read_text())

    def pct(v, chance):
        return f"{100 * v:.1f} % ({100 * chance:.3g} %)"

    first = results[("THINGS-MEG", "brain module", "both, one model")][0][0]["test"]
    eeg = results[("THINGS-EEG2", "brain module", "both, one model")][0][0]["test"]
    lines = [f"# MEG and EEG decoding on the synthetic world ({device_label('cpu')})", "",
             f"World {WORLD} (else mindvis-synth's defaults); seeds {args.seeds}; each number: the mean over the two "
             "subjects (each scored on its own test images) of one seed, mean ± std over seeds, chance in "
             "parentheses. Small set: each subject's "
             f"{first['top1_brain_to_image'].get('chance') and round(1 / first['top1_brain_to_image']['chance'])} "
             "test images (averaged over their repetitions); large set (THINGS-MEG only): each subject's "
             f"{int(first['top5_large_set']['candidates'])} held-out training-image trials of the test concepts, never "
             f"trained on, each ranked among those {int(first['top5_large_set']['candidates'])} images "
             f"(EEG2: {round(1 / eeg['top1_brain_to_image']['chance'])} test images, no large set).", "",
             "| data | decoder | training subjects | " + " | ".join(label for _, label in METRICS) +
             " | seconds per run |", "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for (data, decoder, subjects), reports in results.items():
        cells = []
        for key, _ in METRICS:
            text, chance = cell(reports, key)
            cells.append(text if chance is None else f"{text} ({100 * chance:.3g} %)")
        secs = np.mean([r["seconds"] for runs in reports for r in runs])
        lines.append(f"| {data} | {decoder} | {subjects} | " + " | ".join(cells) + f" | {secs:.0f} |")
    sel = [r["selected_epoch"] for runs in results[("THINGS-MEG", "brain module", "both, one model")] for r in runs]
    stops = [r["history"][-1]["epoch"] for runs in results[("THINGS-MEG", "brain module", "both, one model")]
             for r in runs]
    lines += ["", f"Brain module over both MEG subjects: selected epochs {sel}, stopped at {stops} (patience 10).", "",
              "## time-resolved (ridge, one decoder per 100-ms window every 50 ms, subject 1, seed 0)", "",
              "| window (s) | top-5 (chance) | median rank |", "|---|---|---|"]
    lines += [f"| {r['start']:+.2f} to {r['stop']:+.2f} | {pct(r['top5'], r['chance_top5'])} | {r['median_rank']:.3f} |"
              for r in tr["time_resolved"]]
    lines += ["", "## streaming (mindvis-stream, subject 1's first run, chunks of 0.1 s; decoders trained on its "
              "--filtering window trials)", "", "| decoder | windows | recording (s) | compute (s) | real-time factor | "
              "mean / max ms per window | top-5 of the test-image windows, single trials (chance) | offline test top-5, "
              "averages of 4 trials (chance) |",
              "|---|---|---|---|---|---|---|---|"]
    for (name, st), run in zip(streams.items(), (live, live_ridge)):
        off = run["test"]["top5_brain_to_image"]
        lines.append(f"| {'brain module' if 'bm' in name else 'ridge'} | {st['windows']} | {st['recording_s']:.0f} | "
                     f"{st['compute_s']:.1f} | {st['real_time_factor']:.3f} | {st['mean_compute_ms']:.0f} / "
                     f"{st['max_compute_ms']:.0f} | {pct(st['top5_accuracy'], st['chance_top5'])} over "
                     f"{st['scored_windows']} | {pct(off['value'], off['chance'])} |")
    lines += ["",
              "", ("Measured in this invocation: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())) if times else
              "The world and the preparations were reused from an earlier invocation (not timed here).",
              "", "Times are wall-clock seconds on a machine shared with other jobs (load average ~10 on 2 cores while "
              "this ran): compare quality, not speed."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"world": WORLD, "seeds": args.seeds, "times": times, "stream": streams, "time_resolved": tr["time_resolved"],
         "arms": {" | ".join(k): [[{m: r["test"].get(m) for m, _ in METRICS} | {"seconds": r["seconds"],
                                                                                "selected_epoch": r["selected_epoch"]}
                                   for r in runs] for runs in v] for k, v in results.items()}}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
