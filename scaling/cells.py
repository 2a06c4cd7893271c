"""The cells of the scaling study: the training sizes, each cell's align config, and running a cell (one decoder
arm at one size and seed, or the multi-subject decoder on the first S subjects)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mindvis.align.data import embed_images, split_test_trials
from mindvis.align.decoders import decode
from mindvis.align.engine import align
from mindvis.align.scoring import averaging_curve, score_split
from mindvis.align.training import train_subjects, validation_scores
from mindvis.data.fmri import DataError
from mindvis.finetune.data import build_stage_b_data
from mindvis.models.brain_decoders import SharedMLP, SharedMLPConfig
from mindvis.utils.io import atomic_write_json


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
