"""mindvis-demo: the whole MinD-Vis pipeline on the synthetic world, with the same commands and presets a
researcher uses on real data: stage A (``mindvis-pretrain --data synthetic``), stage B (``mindvis-finetune
--dataset synthetic``), sampling of the test set (``mindvis-sample``) and evaluation (``mindvis-eval``), then a
report of the paper's claims. ``--ablation`` adds stage B from a randomly initialised encoder over several seeds.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .utils.io import atomic_write_json, atomic_write_text


def _stage_a(out: Path, overrides: list[str]) -> dict:
    from .config import build_config
    from .configs import preset_path
    from .pretrain.config import PretrainConfig
    from .pretrain.engine import pretrain

    cfg = build_config(PretrainConfig, preset_path("pretrain", "synthetic"), [f"output_dir={out}", *overrides])
    return pretrain(cfg, run_name="pretrain")


def _stage_b(out: Path, name: str, encoder: str, seed: int, overrides: list[str]) -> dict:
    from .config import build_config
    from .configs import preset_path
    from .finetune.config import FinetuneConfig
    from .finetune.engine import finetune

    cfg = build_config(FinetuneConfig, preset_path("finetune", "synthetic"),
                       [f"output_dir={out}", f"model.encoder={encoder}", f"train.seed={seed}", *overrides])
    return finetune(cfg, run_name=name)


def _sample_eval(run: Path, out: Path, sample_args: list[str], eval_args: list[str]) -> dict:
    from .evaluation.cli import main as eval_main
    from .pipelines.sample_cli import main as sample_main

    if sample_main(["--model", str(run), "--out", str(out), *sample_args]) != 0:
        raise RuntimeError(f"mindvis-sample failed for {run}")
    if eval_main(["--samples", str(out), *eval_args]) != 0:
        raise RuntimeError(f"mindvis-eval failed for {out}")
    return json.loads((out / "eval.json").read_text())


def _nway_key(report: dict) -> str:
    return next(k for k in report["metrics"] if k.endswith("_acc") and "way" in k)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mindvis-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder of the whole chain (default: runs/demo)")
    p.add_argument("--ablation", action="store_true",
                   help="also run stage B from a random encoder, and both arms over --seeds seeds (claim 2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per ablation arm (default 3)")
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps for sampling (default 25)")
    p.add_argument("--num-samples", type=int, default=5, help="samples per test fMRI (default 5)")
    p.add_argument("--pretrain", nargs="*", default=[], metavar="key=value", help="overrides for stage A")
    p.add_argument("--finetune", nargs="*", default=[], metavar="key=value", help="overrides for stage B")
    p.add_argument("--eval", default="", metavar="'ARGS'", help="extra mindvis-eval arguments as one string, "
                                                               "e.g. --eval='--classifier timm:NAME'")
    args = p.parse_args(argv)
    eval_args = shlex.split(args.eval)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sample_args = ["--scheduler", "dpm++", "--steps", str(args.steps), "--num-samples", str(args.num_samples)]

    print("== stage A: SC-MBM pretraining on the synthetic resting state", flush=True)
    a = _stage_a(out, args.pretrain)
    print("== stage B: DC-LDM fine-tuning on the GOD-like pairs", flush=True)
    _stage_b(out, "finetune", str(out / "pretrain"), 2022, args.finetune)
    print("== sampling and evaluating the test set", flush=True)
    ev = _sample_eval(out / "finetune", out / "samples", sample_args, eval_args)

    configs = out / "configs"
    configs.mkdir(exist_ok=True)
    for stage in ("pretrain", "finetune"):
        shutil.copy2(out / stage / "config.yaml", configs / f"{stage}.yaml")
    shutil.copy2(out / "samples" / "sample_config.json", configs / "sample.json")
    for stage in ("pretrain", "finetune"):
        shutil.copy2(out / stage / "loss_curve.png", out / f"loss_curve_{stage}.png")

    key = _nway_key(ev)
    acc = ev["metrics"][key]
    h = a["holdout"]
    claims = {
        "decoding": {"metric": key, "mean": acc["mean"], "std_over_images": acc["std"], "chance": acc["chance"],
                     "n_images": ev["settings"]["n_images"],
                     "above_chance": bool(acc["mean"] > acc["chance"] + 2 * acc["std"] / np.sqrt(ev["settings"]["n_images"]))},
        "masked_modeling": {"model_mse": h["model"]["mse"], "voxel_mean_mse": h["voxel_mean"]["mse"],
                            "nearest_patch_mse": h["nearest_patch"]["mse"], "below_baselines": bool(a["beats_baselines"])},
    }
    if args.ablation:
        print("== ablation: stage B from the stage-A encoder vs a random encoder", flush=True)
        arms = {"pretrained": str(out / "pretrain"), "random": "random"}
        results = {arm: [] for arm in arms}
        for seed in range(args.seeds):
            for arm, enc in arms.items():
                name = f"ablation-{arm}-seed{seed}"
                _stage_b(out / "ablation", name, enc, seed, args.finetune)
                r = _sample_eval(out / "ablation" / name, out / "ablation" / name / "samples", sample_args, eval_args)
                results[arm].append({"seed": seed, key: r["metrics"][key]["mean"],
                                     "pcc_identification": r["metrics"]["pcc_identification"]["mean"]})
        summary = {arm: {m: {"mean": float(np.mean([x[m] for x in rs])), "std": float(np.std([x[m] for x in rs]))}
                         for m in (key, "pcc_identification")} for arm, rs in results.items()}
        diff = summary["pretrained"][key]["mean"] - summary["random"][key]["mean"]
        spread = max(summary["pretrained"][key]["std"], summary["random"][key]["std"])
        claims["pretraining_helps"] = {"per_seed": results, "summary": summary, "difference": float(diff),
                                       "largest_seed_std": float(spread), "holds": bool(diff > spread)}
        lines = ["| stage B encoder | " + key + " (mean ± std over seeds) | PCC identification |", "|---|---|---|"]
        for arm in arms:
            s = summary[arm]
            lines.append(f"| {arm} | {s[key]['mean']:.4f} ± {s[key]['std']:.4f} | "
                         f"{s['pcc_identification']['mean']:.4f} ± {s['pcc_identification']['std']:.4f} |")
        atomic_write_text(out / "ablation" / "ablation.md", "\n".join(lines) + "\n")
    claims["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "claims.json", claims)
    report = [
        "# mindvis on the synthetic world", "",
        f"Reconstructions of the held-out test set (ground truth first, then {args.num_samples} samples): "
        "[samples/grid.png](samples/grid.png). Loss curves: [stage A](loss_curve_pretrain.png), "
        "[stage B](loss_curve_finetune.png). Resolved configs: [configs/](configs/).", "",
        "## Claims", "",
        f"1. Decoding works: {key} = {acc['mean']:.3f} (std over {ev['settings']['n_images']} test images "
        f"{acc['std']:.3f}; chance {acc['chance']:.3f}): {'above chance' if claims['decoding']['above_chance'] else 'NOT clearly above chance'}.",
        f"3. Masked modeling learned the data: held-out masked-patch MSE {h['model']['mse']:.3f} vs per-voxel mean "
        f"{h['voxel_mean']['mse']:.3f} and nearest visible patch {h['nearest_patch']['mse']:.3f}: "
        f"{'below both baselines' if a['beats_baselines'] else 'NOT below both baselines'}.",
    ]
    if args.ablation:
        c = claims["pretraining_helps"]
        report.insert(-1, f"2. Pretraining helps: {key} with the stage-A encoder minus with a random encoder = "
                          f"{c['difference']:.4f} over {args.seeds} seeds (largest seed std {c['largest_seed_std']:.4f}): "
                          f"{'holds' if c['holds'] else 'does NOT hold'} (table: [ablation/ablation.md](ablation/ablation.md)).")
    report += ["", "## Evaluation", "", (out / "samples" / "eval.md").read_text(), f"Total time: {claims['seconds']} s."]
    atomic_write_text(out / "REPORT.md", "\n".join(report) + "\n")
    print("\n".join(report[4:4 + 3 + int(args.ablation)]))
    print(f"\nreport: {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
