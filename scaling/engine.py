"""The scaling study: one ``mindvis-align`` run per cell (decoder arm x training size x seed), then fits.

Cells: training sizes are nested subsets of one seeded order (``data.max_train``), so a seed's curve adds pairs to
the same pairs; the validation split and the decoder's initialisation follow the seed. Each cell's result is written
atomically to ``cells/<arm>-<size>-s<seed>.json``; a rerun skips finished cells (an interrupted one restarts).

The subjects axis (``grid.subjects``): mlp-shared, per-subject adapters into one backbone, trained on the first S
subjects with each subject's pairs fixed or with their total fixed, selected and tested on the first subject.

Analysis, per arm, of the test top-1 retrieval (brain -> image among the test images): the mean and spread over
seeds at each size; a least-squares fit of top-1 against log10(training pairs) with R^2 and a bootstrap confidence
interval of the slope over seeds; the gaps to ridge and, when both arms ran, pretrained minus random and rest- minus
target-pretrained; and the test-time averaging curve (1..R repetitions) at the largest size.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mindvis.align.data import embed_images, split_test_trials
from mindvis.align.decoders import decode
from mindvis.align.engine import align
from mindvis.align.scoring import averaging_curve, score_split
from mindvis.align.training import train_subjects, validation_scores
from mindvis.config import ConfigError, check_settings, save_config
from mindvis.data.fmri import DataError
from mindvis.finetune.data import build_stage_b_data
from mindvis.models.brain_decoders import SharedMLP, SharedMLPConfig
from mindvis.utils.io import atomic_write_json, atomic_write_text

from .config import ARMS, SUBJECT_MODES

log = logging.getLogger("mindvis.scaling")
METRICS = ("top1", "top5", "median_rank", "correlation")


def validate(cfg: DictConfig) -> None:
    g = cfg.grid
    check_settings([
        (len(g.arms) > 0 and all(a in ARMS for a in g.arms), "grid.arms", list(g.arms), f"a non-empty list of {ARMS}"),
        (all(0 < f <= 1 for f in g.fractions) and (g.fractions or g.trials), "grid.fractions", list(g.fractions),
         "fractions in (0, 1] (or give grid.trials)"),
        (all(n >= 2 for n in g.trials), "grid.trials", list(g.trials), "counts >= 2"),
        (len(g.seeds) > 0, "grid.seeds", list(g.seeds), "at least one seed"),
        ("mbm-rest" not in g.arms or bool(g.rest_encoder), "grid.rest_encoder", g.rest_encoder,
         "a stage-A run, model folder or .pth when grid.arms has mbm-rest"),
        ("mbm-target" not in g.arms or bool(g.target_encoder), "grid.target_encoder", g.target_encoder,
         "a stage-A2 run, model folder or .pth when grid.arms has mbm-target"),
        (g.bootstrap >= 0, "grid.bootstrap", g.bootstrap, ">= 0"),
        (all(n >= 1 for n in g.subjects), "grid.subjects", list(g.subjects), "numbers of subjects >= 1"),
        (not g.subjects or (len(g.subject_modes) > 0 and all(m in SUBJECT_MODES for m in g.subject_modes)),
         "grid.subject_modes", list(g.subject_modes), f"a non-empty list of {SUBJECT_MODES}"),
        (g.subject_trials >= 0, "grid.subject_trials", g.subject_trials, ">= 0 (0: one subject's training split)"),
        (not g.subjects or cfg.cell.data.dataset in ("synthetic", "god"), "grid.subjects", list(g.subjects),
         f"empty for dataset {cfg.cell.data.dataset!r}: the subjects axis reads GOD-layout subjects (synthetic, god)"),
        (not g.subject_ids or len(g.subject_ids) >= max(g.subjects, default=0), "grid.subject_ids",
         list(g.subject_ids), f"at least max(grid.subjects) = {max(g.subjects, default=0)} subjects"),
    ])


def sizes(cfg: DictConfig, seed: int) -> list[tuple[str, int]]:
    """(label, training pairs) of every size for ``seed``: explicit counts, or fractions of the training split."""
    if cfg.grid.trials:
        return [(f"n{n}", int(n)) for n in sorted(set(cfg.grid.trials))]
    data_cfg = OmegaConf.merge(cfg.cell.data, {"max_train": 0})
    n_train = len(build_stage_b_data(data_cfg, 16, seed).train)
    return [(f"f{f:g}", max(2, int(round(f * n_train)))) for f in sorted(set(cfg.grid.fractions))]


def cell_config(cfg: DictConfig, arm: str, n: int, seed: int, folder: Path) -> DictConfig:
    """The ``mindvis-align`` config of one cell."""
    c = OmegaConf.merge(cfg.cell, {"data": {"max_train": n}, "train": {"seed": seed}, "output_dir": str(folder)})
    if arm in ("ridge", "mlp", "brain-module"):
        c.decoder.name = arm
    else:
        c.decoder.name = "mbm"
        c.decoder.encoder = {"mbm-random": "random", "mbm-rest": cfg.grid.rest_encoder,
                             "mbm-target": cfg.grid.target_encoder}[arm]
    return c


def cell_scores(test: dict, averaging: list[dict]) -> dict:
    """A cell's record of align's test metrics: the values, their chance, and the averaging curve."""
    names = {"top1": "top1_brain_to_image", "top5": "top5_brain_to_image", "median_rank": "relative_median_rank",
             "correlation": "embedding_correlation"}
    return {"test": {k: test[v]["value"] for k, v in names.items()},
            "chance": {"top1": test[names["top1"]]["chance"], "top5": test[names["top5"]]["chance"], "median_rank": 0.5,
                       "correlation": 0.0},
            "averaging": [{"repetitions": a["repetitions"], "top1": a["top1"], "top5": a["top5"]} for a in averaging]}


def run_cell(cfg: DictConfig, arm: str, label: str, n: int, seed: int, out: Path) -> dict:
    """Train and test one cell with mindvis-align; its run folder is ``out/runs/<name>``."""
    name = f"{arm}-{label}-s{seed}"
    runs = out / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)  # an interrupted cell starts over
    t0 = time.time()
    report = align(cell_config(cfg, arm, n, seed, runs), run_name=name)
    result = {"arm": arm, "size": label, "n_train": n, "seed": seed, "seconds": round(time.time() - t0, 1),
              **cell_scores(report["test"], report.get("averaging", []))}
    atomic_write_json(out / "cells" / f"{name}.json", result)
    return result


def subject_ids(cfg: DictConfig) -> list[str]:
    """The subjects of the subjects axis, the tested one first."""
    return list(cfg.grid.subject_ids) or [f"sbj_{i + 1}" for i in range(max(cfg.grid.subjects))]


def subject_cells(cfg: DictConfig) -> list[tuple[str, int, str, int]]:
    """(name, subjects, mode, seed) of the subjects axis; one subject is the same cell in every mode."""
    out = []
    for seed in cfg.grid.seeds:
        for n in sorted(set(cfg.grid.subjects)):
            for mode in (["any"] if n == 1 else cfg.grid.subject_modes):
                out.append((f"mlp-shared-{mode}-S{n}-s{seed}", n, mode, seed))
    return out


def run_subject_cell(cfg: DictConfig, name: str, n_subjects: int, mode: str, seed: int, out: Path) -> dict:
    """Train mlp-shared on the first ``n_subjects`` subjects (each subject's pairs fixed, or their total fixed),
    select the epoch on the first subject's validation split, and test on the first subject."""
    t0 = time.time()
    c = OmegaConf.merge(cfg.cell, {"train": {"seed": seed}})
    ids = subject_ids(cfg)[:n_subjects]
    total = cfg.grid.subject_trials or len(build_stage_b_data(
        OmegaConf.merge(c.data, {"subjects": ids[:1], "max_train": 0}), 16, seed).train)
    each = total if mode != "total" else max(2, total // n_subjects)
    data = {s: build_stage_b_data(OmegaConf.merge(c.data, {"subjects": [s], "max_train": each}), 16, seed)
            for s in ids}
    first = data[ids[0]]
    test, trials = split_test_trials(first.test)
    held = set(first.val.ids) | set(test.ids)  # the tested subject's validation and test images train nobody
    train = {}
    for s, d in data.items():
        keep = [i for i, x in enumerate(d.train.ids) if x not in held]
        if len(keep) < 2:
            raise DataError(f"subject {s}: fewer than two training pairs outside {ids[0]}'s validation and test images")
        train[s] = d.train.subset(keep)
    emb = embed_images(c, {**{f"train:{s}": t.images for s, t in train.items()}, "val": first.val.images,
                           "test": test.images})
    d, tc = c.decoder, c.train
    torch.manual_seed(seed)
    model = SharedMLP(SharedMLPConfig({s: t.fmri.shape[-1] for s, t in train.items()}, emb["test"].shape[1],
                                      d.hidden, d.hidden, d.blocks, d.input_dropout, d.block_dropout,
                                      d.projector_hidden))
    sign = -1.0 if tc.select_metric == "val_loss" else 1.0

    def val(m):
        return sign * validation_scores(m.for_subject(ids[0]), first.val.fmri, emb["val"], c, c.loss.clip_temperature)[
            tc.select_metric]

    fit = train_subjects(model, {s: (t.fmri, emb[f"train:{s}"]) for s, t in train.items()}, tc.epochs, tc.lr,
                         tc.batch_size, c.loss.contrastive_weight, c.loss.clip_temperature, tc.weight_decay, seed,
                         val if len(first.val) >= 2 else None, tc.val_every)
    view = model.for_subject(ids[0])
    rep = score_split(decode(view, test.fmri), emb["test"], c.eval, seed)
    model.save_pretrained(out / "runs" / name / "model")
    result = {"arm": "mlp-shared", "subjects": n_subjects, "mode": mode, "seed": seed, "ids": ids,
              "pairs_per_subject": {s: len(t) for s, t in train.items()}, "best_epoch": fit["best_epoch"],
              "seconds": round(time.time() - t0, 1),
              **cell_scores(rep, averaging_curve(view, trials, emb["test"]) if trials is not None else [])}
    atomic_write_json(out / "cells" / f"{name}.json", result)
    return result


def analyse_subjects(results: list[dict], modes: list[str], bootstrap: int, seed: int = 0) -> dict:
    """Per mode: top-1 mean/std over seeds per number of subjects (one-subject cells count in every mode) and the
    fit of top-1 on log10(subjects)."""
    rng = np.random.default_rng(seed)
    out = {}
    for mode in modes:
        rs = [r for r in results if r["mode"] in (mode, "any")]
        if not rs:
            continue
        curve = []
        for k in sorted({r["subjects"] for r in rs}):
            v = np.array([r["test"]["top1"] for r in rs if r["subjects"] == k])
            curve.append({"subjects": k, "top1": {"mean": float(v.mean()), "std": float(v.std()),
                                                  "chance": rs[0]["chance"]["top1"]}, "seeds": len(v),
                          "pairs_per_subject": float(np.mean([np.mean(list(r["pairs_per_subject"].values()))
                                                              for r in rs if r["subjects"] == k]))})
        fit = fit_log_linear(np.array([r["subjects"] for r in rs], float), np.array([r["test"]["top1"] for r in rs]),
                             np.array([r["seed"] for r in rs]), bootstrap, rng)
        out[mode] = {"curve": curve, "fit": fit}
    return out


def fit_log_linear(n: np.ndarray, y: np.ndarray, seeds: np.ndarray, bootstrap: int, rng) -> dict:
    """y = intercept + slope * log10(n) by least squares over every (size, seed) point, R^2, and the 95 % interval
    of the slope from resampling the seeds with replacement."""
    x = np.log10(n)
    if len(np.unique(x)) < 2:
        return {"slope": None, "intercept": None, "r2": None, "slope_ci": None}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (resid ** 2).sum() / ss_tot if ss_tot > 0 else None
    uniq = np.unique(seeds)
    draws = []
    for _ in range(bootstrap if len(uniq) > 1 else 0):
        pick = np.concatenate([np.flatnonzero(seeds == s) for s in rng.choice(uniq, len(uniq))])
        if len(np.unique(x[pick])) > 1:
            draws.append(np.polyfit(x[pick], y[pick], 1)[0])
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else None
    return {"slope": float(slope), "intercept": float(intercept), "r2": None if r2 is None else float(r2),
            "slope_ci": ci}


def analyse(results: list[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per arm: curves (mean, std over seeds per size), fits, averaging; and the gaps between arms."""
    rng = np.random.default_rng(seed)
    out = {"arms": {}, "gaps": {}}
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    for arm, rs in by_arm.items():
        n = np.array([r["n_train"] for r in rs], dtype=float)
        seeds = np.array([r["seed"] for r in rs])
        entry = {"curve": [], "fits": {}, "averaging": []}
        for label in sorted({r["size"] for r in rs}, key=lambda lb: np.mean([r["n_train"] for r in rs
                                                                             if r["size"] == lb])):
            cell = [r for r in rs if r["size"] == label]
            row = {"size": label, "n_train": float(np.mean([r["n_train"] for r in cell])), "seeds": len(cell)}
            for m in METRICS:
                v = np.array([r["test"][m] for r in cell])
                row[m] = {"mean": float(v.mean()), "std": float(v.std()), "chance": cell[0]["chance"][m]}
            entry["curve"].append(row)
        for m in ("top1", "top5", "correlation"):
            entry["fits"][m] = fit_log_linear(n, np.array([r["test"][m] for r in rs]), seeds, bootstrap, rng)
        largest = max(rs, key=lambda r: r["n_train"])["size"]
        curves = [r["averaging"] for r in rs if r["size"] == largest and r["averaging"]]
        for i in range(min((len(c) for c in curves), default=0)):
            v = np.array([c[i]["top1"] for c in curves])
            entry["averaging"].append({"repetitions": curves[0][i]["repetitions"], "top1": float(v.mean()),
                                       "std": float(v.std())})
        out["arms"][arm] = entry

    def gap(a: str, b: str) -> list[dict]:
        rows = []
        for label in [row["size"] for row in out["arms"][a]["curve"]]:
            pairs = [(x["test"]["top1"], y["test"]["top1"]) for x in by_arm[a] for y in by_arm[b]
                     if x["size"] == y["size"] == label and x["seed"] == y["seed"]]
            if pairs:
                d = np.array([p - q for p, q in pairs])
                rows.append({"size": label, "n_train": next(r["n_train"] for r in out["arms"][a]["curve"]
                                                             if r["size"] == label),
                             "top1_gap": float(d.mean()), "std": float(d.std()), "seeds": len(d)})
        return rows

    pairs = [(a, "ridge") for a in by_arm if a != "ridge"] + [("mbm-rest", "mbm-random"), ("mbm-target", "mbm-random"),
                                                               ("mbm-rest", "mbm-target")]
    for a, b in pairs:
        if a in by_arm and b in by_arm:
            out["gaps"][f"{a} - {b}"] = gap(a, b)
    return out


def markdown(report: dict) -> str:
    a = report["analysis"]
    world = report.get("world")
    setting = "" if not world else (f" (world: single-trial SNR {world['snr']:g}, {world['test_repeats']} test "
                                    f"repetitions, {world['response']} responses, shared noise {world['shared_noise']:g})")
    lines = ["# Scaling study", "", f"{report['data']}{setting}; target {report['target']}; seeds {report['seeds']}.", "",
             "Test top-1 retrieval (brain -> image among the test images; mean ± std over seeds):", "",
             "| arm | training pairs | top-1 | chance | top-5 | median rank | embedding r |", "|---|---|---|---|---|---|---|"]
    for arm, e in a["arms"].items():
        for row in e["curve"]:
            lines.append(f"| {arm} | {row['n_train']:.0f} | {row['top1']['mean']:.3f} ± {row['top1']['std']:.3f} | "
                         f"{row['top1']['chance']:.3f} | {row['top5']['mean']:.3f} | "
                         f"{row['median_rank']['mean']:.3f} | {row['correlation']['mean']:.3f} |")
    lines += ["", "Fit top-1 = a + b log10(pairs) (all seeds' points; b's 95 % interval by resampling seeds):", "",
              "| arm | slope b | 95 % interval | intercept a | R^2 |", "|---|---|---|---|---|"]
    for arm, e in a["arms"].items():
        f = e["fits"]["top1"]
        if f["slope"] is None:
            lines.append(f"| {arm} | - | - | - | - |")
            continue
        ci = "-" if f["slope_ci"] is None else f"[{f['slope_ci'][0]:.3f}, {f['slope_ci'][1]:.3f}]"
        r2 = "-" if f["r2"] is None else f"{f['r2']:.2f}"
        lines.append(f"| {arm} | {f['slope']:.3f} | {ci} | {f['intercept']:.3f} | {r2} |")
    if a["gaps"]:
        lines += ["", "Gaps in top-1 (paired by seed; mean ± std):", "", "| comparison | training pairs | gap |",
                  "|---|---|---|"]
        for name, rows in a["gaps"].items():
            lines += [f"| {name} | {r['n_train']:.0f} | {r['top1_gap']:+.3f} ± {r['std']:.3f} |" for r in rows]
    avg = {arm: e["averaging"] for arm, e in a["arms"].items() if e["averaging"]}
    if avg:
        reps = [p["repetitions"] for p in next(iter(avg.values()))]
        lines += ["", "Test-time averaging at the largest size (top-1 over 1..R repetitions):", "",
                  "| arm | " + " | ".join(f"R={r}" for r in reps) + " |", "|---" * (len(reps) + 1) + "|"]
        lines += [f"| {arm} | " + " | ".join(f"{p['top1']:.3f}" for p in pts) + " |" for arm, pts in avg.items()]
    for mode, e in a.get("subjects", {}).items():
        fit = e["fit"]
        slope = ("" if fit["slope"] is None else f"; top-1 = {fit['intercept']:.3f} {'+' if fit['slope'] >= 0 else '-'} "
                 f"{abs(fit['slope']):.3f} log10(S)")
        lines += ["", f"Subjects axis, mlp-shared, {mode} pairs fixed (tested on the first subject){slope}:", "",
                  "| subjects S | pairs per subject | top-1 | chance |", "|---|---|---|---|"]
        lines += [f"| {r['subjects']} | {r['pairs_per_subject']:.0f} | {r['top1']['mean']:.3f} ± {r['top1']['std']:.3f} | "
                  f"{r['top1']['chance']:.3f} |" for r in e["curve"]]
    return "\n".join(lines) + "\n"


def _band_plot(path: Path, curves: dict, chance: float, xlabel: str, ylabel: str, title: str, log_x: bool = False,
               fits: dict | None = None) -> None:
    """One line per curve (label -> (x, mean, std)) with its +-std band, dashed fits (label -> (a, b): a + b log10 x)
    and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, m, s) in curves.items():
        x, m, s = np.asarray(x, float), np.asarray(m), np.asarray(s)
        line, = ax.plot(x, m, "o-", label=label)
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2)
        if fits and fits.get(label):
            xs = np.geomspace(x.min(), x.max(), 20)
            ax.plot(xs, fits[label][0] + fits[label][1] * np.log10(xs), "--", color=line.get_color(), lw=1)
    ax.axhline(chance, color="gray", lw=1, ls=":", label="chance")
    ax.set(xscale="log" if log_x else "linear", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(report: dict, out: Path) -> None:
    """scaling.png (top-1 vs training pairs with fits), averaging.png, and subjects.png when the axis ran."""
    a = report["analysis"]
    top1 = lambda rows: ([r["top1"]["mean"] for r in rows], [r["top1"]["std"] for r in rows])
    chance = next(iter(a["arms"].values()))["curve"][0]["top1"]["chance"]
    _band_plot(out / "scaling.png", {arm: ([r["n_train"] for r in e["curve"]], *top1(e["curve"]))
                                     for arm, e in a["arms"].items()}, chance, "training pairs",
               "test top-1 (brain -> image)", "scaling with data", log_x=True,
               fits={arm: (e["fits"]["top1"]["intercept"], e["fits"]["top1"]["slope"])
                     if e["fits"]["top1"]["slope"] is not None else None for arm, e in a["arms"].items()})
    avg = {arm: e["averaging"] for arm, e in a["arms"].items() if e["averaging"]}
    if avg:
        _band_plot(out / "averaging.png", {arm: ([p["repetitions"] for p in pts], [p["top1"] for p in pts],
                                                 [p["std"] for p in pts]) for arm, pts in avg.items()},
                   chance, "test repetitions averaged", "test top-1", "test-time averaging (largest size)")
    if a.get("subjects"):
        _band_plot(out / "subjects.png", {f"mlp-shared, {mode} pairs fixed": ([r["subjects"] for r in e["curve"]],
                                                                              *top1(e["curve"]))
                                          for mode, e in a["subjects"].items()},
                   chance, "training subjects", "test top-1 (first subject)", "scaling with subjects")


def scaling(cfg: DictConfig, out: str | Path) -> dict:
    """Run (or continue) the study in ``out``; returns the report (also scaling.json / .md / PNGs)."""
    validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.yaml"
    if config_file.is_file():  # a continued study must be the same study
        saved = OmegaConf.load(config_file)
        if OmegaConf.to_container(saved, resolve=True) != OmegaConf.to_container(cfg, resolve=True):
            raise ConfigError(f"{out} holds a study with other settings ({config_file}); use another --out")
    else:
        save_config(cfg, config_file)
    cells = [(arm, label, n, seed) for seed in cfg.grid.seeds for label, n in sizes(cfg, seed) for arm in cfg.grid.arms]
    extra = subject_cells(cfg) if cfg.grid.subjects else []
    results, subject_results = [], []
    with tqdm(total=len(cells) + len(extra), desc="scaling cells") as bar:
        for arm, label, n, seed in cells:
            done = out / "cells" / f"{arm}-{label}-s{seed}.json"
            if done.is_file():
                results.append(json.loads(done.read_text()))
            else:
                log.info("cell %s, %s (%d training pairs), seed %d", arm, label, n, seed)
                results.append(run_cell(cfg, arm, label, n, seed, out))
            bar.update()
        for name, k, mode, seed in extra:
            done = out / "cells" / f"{name}.json"
            if done.is_file():
                subject_results.append(json.loads(done.read_text()))
            else:
                log.info("cell mlp-shared, %d subjects (%s), seed %d", k, mode, seed)
                subject_results.append(run_subject_cell(cfg, name, k, mode, seed, out))
            bar.update()
    first = results[0]
    analysis = analyse(results, cfg.grid.bootstrap)
    if subject_results:
        analysis["subjects"] = analyse_subjects(subject_results, list(cfg.grid.subject_modes), cfg.grid.bootstrap)
    world = cfg.cell.data.synthetic if cfg.cell.data.dataset == "synthetic" else None
    report = {"data": cfg.cell.data.dataset, "target": cfg.cell.target, "seeds": list(cfg.grid.seeds),
              "world": None if world is None else {k: world[k] for k in ("snr", "test_repeats", "response",
                                                                           "shared_noise")},
              "cells": results, "subject_cells": subject_results, "analysis": analysis,
              "chance_top1": first["chance"]["top1"]}
    atomic_write_json(out / "scaling.json", report)
    atomic_write_text(out / "scaling.md", markdown(report))
    plot(report, out)
    return report
