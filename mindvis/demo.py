"""mindvis-demo: the whole MinD-Vis pipeline on the synthetic world, with the same commands and presets a
researcher uses on real data: stage A (``mindvis-pretrain --data synthetic``), stage B (``mindvis-finetune
--dataset synthetic``), sampling of the test set (``mindvis-sample``) and evaluation (``mindvis-eval``), then a
report of the paper's claims. The report also gives the prior's ceiling: the test classes drawn by the prior
from their true labels and scored the same way.

``--ablation`` adds claim 2: stage B from the stage-A encoder and from a randomly initialised encoder over
several seeds. Every run is scored on its validation split (classes carved from training); with several
``--encoder-lrs`` each arm takes the rate with the best validation score, and only the selected runs are
scored on the test set: on its repetition-averaged fMRI (the paper's protocol) and on every single repetition
(the noise level stage B is trained and validated on). A linear probe (ridge from frozen features to the
stimulus pixels) of the stage-A encoder, a random encoder and the raw voxels shows what pretraining gives
before any diffusion training.
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

from .utils.io import atomic_write, atomic_write_json, atomic_write_text

SELECT_METRIC = "pcc_identification"  # validation score of the ablation (see --help)
#: everything a demo writes into --out (what --overwrite removes)
DEMO_OUTPUTS = ("pretrain", "finetune", "samples", "prior_ceiling", "configs", "ablation", "loss_curve_pretrain.png",
                "loss_curve_finetune.png", "claims.json", "REPORT.md")


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


def _evaluate(samples: Path, eval_args: list[str]) -> dict:
    from .evaluation.cli import main as eval_main

    if eval_main(["--samples", str(samples), *eval_args]) != 0:
        raise RuntimeError(f"mindvis-eval failed for {samples}")
    return json.loads((samples / "eval.json").read_text())


def _sample_eval(run: Path, out: Path, split: str, sample_args: list[str], eval_args: list[str]) -> dict:
    from .pipelines.sample_cli import main as sample_main

    if sample_main(["--model", str(run), "--out", str(out), "--split", split, *sample_args]) != 0:
        raise RuntimeError(f"mindvis-sample failed for {run}")
    return _evaluate(out, eval_args)


def _prior_ceiling(prior: str, test_samples: Path, out: Path, num_samples: int, steps: int,
                   eval_args: list[str]) -> dict | None:
    """The prior drawing the test classes from their true labels, scored like the reconstructions: the most
    that decoding through this prior can reach. None for a prior without class labels."""
    from .finetune.prior import sample_classes

    if not (Path(prior) / "class_embedder").is_dir():
        return None
    with np.load(test_samples / "samples.npz", allow_pickle=False) as z:
        truth, labels, meta = z["ground_truth"], z["labels"], z["meta"]
    images = sample_classes(prior, labels.astype(np.int64), num_samples, steps)
    arrays = {"samples": (images.permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8),
              "ground_truth": truth, "labels": labels, "meta": meta}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "samples.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    return _evaluate(out, eval_args)


def _nway_key(report: dict) -> str:
    return next(k for k in report["metrics"] if k.endswith("_acc") and "way" in k)


def _mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def _probe(out: Path, args, image_size: int) -> dict:
    """Linear probes of frozen features (stage-A encoder, random encoder, raw voxels) on each seed's splits:
    does pretraining make the stimulus easier to read out, before any diffusion training?"""
    import torch

    from .config import build_config
    from .configs import preset_path
    from .data.pairs import PairedDataset
    from .evaluation.probe import probe_identification
    from .finetune.config import FinetuneConfig
    from .finetune.data import build_stage_b_data
    from .finetune.engine import build_encoder, load_encoder

    cfg = build_config(FinetuneConfig, preset_path("finetune", "synthetic"),
                       [f"output_dir={out}", f"model.encoder={out / 'pretrain'}", *args.finetune])
    m = cfg.model
    encoders = {"pretrained": load_encoder(m.encoder, m.encoder_variant),
                "random": load_encoder("random", m.encoder_variant)}
    scores = {}
    for seed in range(args.seeds):
        data = build_stage_b_data(cfg.data, encoders["pretrained"][0].patch_size, seed)
        splits = {"train": data.train, "val": data.val, "test": data.test}
        targets = {k: np.stack([PairedDataset(s, image_size, train=False).image_tensor(i, False).numpy()
                                for i in range(len(s))]) for k, s in splits.items()}
        for name, (enc_cfg, weights) in encoders.items():
            torch.manual_seed(seed)
            encoder = build_encoder(data.num_voxels, enc_cfg, weights, m.global_pool, m.interpolate_positions).eval()
            with torch.no_grad():
                feats = {k: encoder(torch.from_numpy(np.asarray(s.fmri, np.float32))[:, None]).flatten(1).numpy()
                         for k, s in splits.items()}
            scores.setdefault(name, []).append(probe_identification(feats, targets))
        scores.setdefault("voxels", []).append(probe_identification({k: s.fmri for k, s in splits.items()}, targets))
    return {name: {m: _mean_std([r[m] for r in rs]) for m in ("val_identification", "test_identification")}
            for name, rs in scores.items()}


def _ablation(out: Path, args, sample_args: list[str], eval_args: list[str], image_size: int) -> dict:
    """Claim 2: per arm and encoder rate, stage B over seeds scored on validation; per arm the rate with the
    best mean validation score is scored on the test set."""
    arms = {"pretrained": str(out / "pretrain"), "random": "random"}
    lrs = args.encoder_lrs or [None]  # None: the preset's rate
    root = out / "ablation"
    runs = {}  # (arm, lr) -> per-seed records
    for seed in range(args.seeds):
        for arm, enc in arms.items():
            for lr in lrs:
                name = f"{arm}{'' if lr is None else f'-enclr{lr:g}'}-seed{seed}"
                _stage_b(root, name, enc, seed, args.finetune + ([] if lr is None else [f"train.encoder_lr={lr}"]))
                r = _sample_eval(root / name, root / name / "samples-val", "val", sample_args, eval_args)
                key = _nway_key(r)
                runs.setdefault((arm, lr), []).append(
                    {"seed": seed, "run": name, "val": {key: r["metrics"][key]["mean"],
                                                        SELECT_METRIC: r["metrics"][SELECT_METRIC]["mean"]}})
    selected = {arm: max(lrs, key=lambda lr: np.mean([x["val"][SELECT_METRIC] for x in runs[(arm, lr)]]))
                for arm in arms}
    # record key -> (mindvis-sample split, folder): the repetition averages and the single repetitions
    tests = {"test": ("test", "samples"), "test_trials": ("test-trials", "samples-trials")}
    for arm, lr in selected.items():
        for rec in runs[(arm, lr)]:
            for split, (sample_split, folder) in tests.items():
                r = _sample_eval(root / rec["run"], root / rec["run"] / folder, sample_split, sample_args, eval_args)
                rec[split] = {key: r["metrics"][key]["mean"], SELECT_METRIC: r["metrics"][SELECT_METRIC]["mean"]}
    rows = []
    for (arm, lr), recs in runs.items():
        row = {"arm": arm, "encoder_lr": lr, "selected": selected[arm] == lr, "per_seed": recs,
               "val": {m: _mean_std([x["val"][m] for x in recs]) for m in (key, SELECT_METRIC)}}
        if row["selected"]:
            row.update({split: {m: _mean_std([x[split][m] for x in recs]) for m in (key, SELECT_METRIC)}
                        for split in tests})
        rows.append(row)

    def verdict(split):
        scores = {r["arm"]: r[split][key] for r in rows if r["selected"]}
        diff = scores["pretrained"]["mean"] - scores["random"]["mean"]
        spread = max(scores["pretrained"]["std"], scores["random"]["std"])
        return {"difference": float(diff), "largest_seed_std": float(spread), "holds": bool(diff > spread)}

    fmt = lambda s: f"{s['mean']:.4f} ± {s['std']:.4f}"  # noqa: E731
    lines = [f"Stage B from the stage-A encoder vs a random encoder, mean ± std over {args.seeds} seeds. Validation: "
             f"each run's own validation split (single trials); per arm the encoder rate with the best validation "
             f"{SELECT_METRIC} (*) is the one scored on the test set: the repetition-averaged test fMRI (test) and "
             "every single test repetition (test trials).", "",
             "| encoder | encoder lr | " + " | ".join(f"{s} {m}" for s in ("val", "test", "test trials")
                                                    for m in (key, SELECT_METRIC)) + " |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = "preset" if r["encoder_lr"] is None else f"{r['encoder_lr']:g}"
        cells = [fmt(r[s][m]) if s in r else "—" for s in ("val", *tests) for m in (key, SELECT_METRIC)]
        lines.append(f"| {r['arm']} | {lr}{' *' if r['selected'] and len(lrs) > 1 else ''} | " + " | ".join(cells) + " |")
    probe = _probe(out, args, image_size)
    lines += ["", "Linear probe of the frozen features before stage B: ridge regression from training fMRI to the "
              "stimulus pixels (penalty chosen on validation), pixel-correlation identification (chance 0.5):", "",
              "| features | val identification | test identification |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(p['val_identification'])} | {fmt(p['test_identification'])} |"
              for name, p in probe.items()]
    atomic_write_text(root / "ablation.md", "\n".join(lines) + "\n")
    return {"metric": key, "linear_probe": probe, "select_metric": f"val_{SELECT_METRIC}", "rows": rows,
            **verdict("test"), "single_trials": verdict("test_trials")}


def main(argv=None) -> int:
    from .utils.cli import PlainHelpFormatter, check_output_folder

    p = argparse.ArgumentParser(prog="mindvis-demo", description=__doc__, formatter_class=PlainHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder of the whole chain (default: runs/demo); new or empty "
                                                      "(see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove what an earlier demo left in --out before this one starts (without it a non-empty "
                        "--out is refused)")
    p.add_argument("--ablation", action="store_true",
                   help="also run stage B from the stage-A and from a random encoder over --seeds seeds (claim 2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per ablation arm (default 3)")
    p.add_argument("--encoder-lrs", type=float, nargs="+", default=None, metavar="LR",
                   help="ablation: candidate train.encoder_lr values; each arm takes the one with the best mean "
                        f"validation {SELECT_METRIC} (default: the preset's rate only)")
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps for sampling (default 25)")
    p.add_argument("--num-samples", type=int, default=5, help="samples per test fMRI (default 5)")
    p.add_argument("--pretrain", nargs="*", default=[], metavar="key=value", help="overrides for stage A")
    p.add_argument("--finetune", nargs="*", default=[], metavar="key=value", help="overrides for stage B")
    p.add_argument("--eval", default="", metavar="'ARGS'", help="extra mindvis-eval arguments as one string, "
                                                               "e.g. --eval='--classifier timm:NAME'")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    eval_args = shlex.split(args.eval)
    from .data.fmri import DataError

    try:
        out = check_output_folder(args.out, args.overwrite)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS) if out.is_dir() else []
        if args.overwrite and foreign:
            raise DataError(f"{out} holds {', '.join(foreign[:4])}, which mindvis-demo does not write: --overwrite "
                            "removes only an earlier demo's outputs; choose another --out")
    except DataError as e:
        print(f"mindvis-demo: error: {e}", file=sys.stderr)
        return 2
    for name in DEMO_OUTPUTS if args.overwrite else ():
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sample_args = ["--scheduler", "dpm++", "--steps", str(args.steps), "--num-samples", str(args.num_samples)]

    print("== stage A: SC-MBM pretraining on the synthetic resting state", flush=True)
    a = _stage_a(out, args.pretrain)
    print("== stage B: DC-LDM fine-tuning on the GOD-like pairs", flush=True)
    b = _stage_b(out, "finetune", str(out / "pretrain"), 2022, args.finetune)
    print("== sampling and evaluating the test set", flush=True)
    ev = _sample_eval(out / "finetune", out / "samples", "test", sample_args, eval_args)
    print("== the prior's ceiling: the test classes drawn from their true labels", flush=True)
    ceiling = _prior_ceiling(b["prior"], out / "samples", out / "prior_ceiling", args.num_samples, args.steps,
                             eval_args)

    configs = out / "configs"
    configs.mkdir(exist_ok=True)
    for stage in ("pretrain", "finetune"):
        shutil.copy2(out / stage / "config.yaml", configs / f"{stage}.yaml")
        shutil.copy2(out / stage / "loss_curve.png", out / f"loss_curve_{stage}.png")
    shutil.copy2(out / "samples" / "sample_config.json", configs / "sample.json")

    key = _nway_key(ev)
    acc = ev["metrics"][key]
    n_img = ev["settings"]["n_images"]
    h = a["holdout"]
    claims = {
        "decoding": {"metric": key, "mean": acc["mean"], "std_over_images": acc["std"], "chance": acc["chance"],
                     "n_images": n_img, "above_chance": bool(acc["mean"] > acc["chance"] + 2 * acc["std"] / np.sqrt(n_img)),
                     "prior_ceiling": ceiling["metrics"][key]["mean"] if ceiling else None},
        "masked_modeling": {"model_mse": h["model"]["mse"], "voxel_mean_mse": h["voxel_mean"]["mse"],
                            "nearest_patch_mse": h["nearest_patch"]["mse"], "below_baselines": bool(a["beats_baselines"])},
    }
    if args.ablation:
        print("== ablation: stage B from the stage-A encoder vs a random encoder", flush=True)
        with np.load(out / "samples" / "samples.npz", allow_pickle=False) as z:
            image_size = z["ground_truth"].shape[1]
        claims["pretraining_helps"] = _ablation(out, args, sample_args, eval_args, image_size)
    claims["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "claims.json", claims)

    d = claims["decoding"]
    ceiling_text = (f" The prior itself, given the true test labels, reaches {d['prior_ceiling']:.3f} "
                    "([prior_ceiling/eval.md](prior_ceiling/eval.md)): the most decoding through it can reach."
                    if ceiling else "")
    lines = [
        f"Decoding works: {key} = {acc['mean']:.3f} (std over {n_img} test images {acc['std']:.3f}; chance "
        f"{acc['chance']:.3f}): {'above chance' if d['above_chance'] else 'NOT clearly above chance'}.{ceiling_text}",
        f"Masked modeling learned the data: held-out masked-patch MSE {h['model']['mse']:.3f} vs per-voxel mean "
        f"{h['voxel_mean']['mse']:.3f} and nearest visible patch {h['nearest_patch']['mse']:.3f}: "
        f"{'below both baselines' if a['beats_baselines'] else 'NOT below both baselines'}.",
    ]
    if args.ablation:
        c = claims["pretraining_helps"]
        said = lambda v: (f"{v['difference']:.4f} (largest seed std {v['largest_seed_std']:.4f}): "  # noqa: E731
                          f"{'holds' if v['holds'] else 'does NOT hold'}")
        lines.insert(1, f"Pretraining helps: {key} with the stage-A encoder minus with a random encoder, over "
                        f"{args.seeds} seeds, on the repetition-averaged test fMRI = {said(c)}; on the single test "
                        f"trials = {said(c['single_trials'])}. Validation scores and the encoder rate selected on "
                        "them: [ablation/ablation.md](ablation/ablation.md).")
    lines = [f"{i}. {line}" for i, line in enumerate(lines, 1)]  # claim 2 exists only with --ablation
    report = ["# mindvis on the synthetic world", "",
              f"Reconstructions of the held-out test set (ground truth first, then {args.num_samples} samples): "
              "[samples/grid.png](samples/grid.png). Loss curves: [stage A](loss_curve_pretrain.png), "
              "[stage B](loss_curve_finetune.png). Resolved configs: [configs/](configs/).", "",
              "## Claims", "", *lines, "", "## Evaluation", "", (out / "samples" / "eval.md").read_text(),
              f"Total time: {claims['seconds']} s."]
    atomic_write_text(out / "REPORT.md", "\n".join(report) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
