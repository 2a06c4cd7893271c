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
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mindvis.config import ConfigError, check_settings, save_config
from mindvis.data.fmri import DataError
from mindvis.utils.cli import check_output_folder
from mindvis.utils.io import atomic_write_json, atomic_write_text

from .analysis import analyse, analyse_subjects
from .cells import cell_config, run_cell, run_subject_cell, sizes, subject_cells
from .config import ARMS, SUBJECT_MODES
from .report import markdown, plot

log = logging.getLogger("mindvis.scaling")


def validate(cfg: DictConfig) -> None:
    """The grid and every arm's ``mindvis-align`` settings (``cell.*``), checked before anything is written."""
    from mindvis.align.settings import validate as validate_cell

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
    for arm in g.arms:  # each arm's cells are align runs: their settings as align checks them, named cell.*
        try:
            validate_cell(cell_config(cfg, arm, 2, g.seeds[0], Path(cfg.output_dir)), prefix="cell.")
        except ConfigError as e:
            raise ConfigError(f"grid.arms {arm}: {e}") from None


def is_study(folder: Path) -> bool:
    """A folder this command wrote: its config.yaml holds a grid."""
    try:
        return "grid" in (OmegaConf.load(folder / "config.yaml") or {})
    except Exception:  # noqa: BLE001 - missing or not YAML: not a study
        return False


#: what a finished cell's record holds (mindvis.scaling.cells)
CELL_KEYS = ("arm", "seed", "test", "chance", "averaging")


def read_cell(path: Path) -> dict:
    """A finished cell's record, or a one-line DataError naming the file and what is wrong with it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable cell record ({type(e).__name__}: {e}); delete it to run the cell "
                        "again") from None
    missing = [k for k in CELL_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise DataError(f"{path}: not a finished cell record (no {', '.join(missing)}); delete it to run the cell "
                        "again")
    return record


def scaling(cfg: DictConfig, out: str | Path) -> dict:
    """Run (or continue) the study in ``out``; returns the report (also scaling.json / .md / PNGs)."""
    validate(cfg)
    out = check_output_folder(out, reusable=lambda d: (d / "config.yaml").is_file(), flag=None)
    config_file = out / "config.yaml"
    if config_file.is_file():  # a continued study must be the same study
        try:
            saved = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
        except Exception as e:  # noqa: BLE001 - YAML errors come in many types
            raise DataError(f"{config_file}: not a readable study config ({type(e).__name__}); use another --out") from None
        if saved != OmegaConf.to_container(cfg, resolve=True):
            finished = list((out / "cells").glob("*.json"))
            hint = (f"{len(finished)} finished cell(s)" if finished else
                    f"no cell has finished: remove {config_file} to start the study over with these settings")
            raise ConfigError(f"{out} holds a study with other settings ({config_file}; {hint}); use another --out")
    cells = [(arm, label, n, seed) for seed in cfg.grid.seeds for label, n in sizes(cfg, seed) for arm in cfg.grid.arms]
    extra = subject_cells(cfg) if cfg.grid.subjects else []
    if not config_file.is_file():  # written once the settings are checked and the data is readable
        save_config(cfg, config_file)
    results, subject_results = [], []
    with tqdm(total=len(cells) + len(extra), desc="scaling cells") as bar:
        for arm, label, n, seed in cells:
            done = out / "cells" / f"{arm}-{label}-s{seed}.json"
            if done.is_file():
                results.append(read_cell(done))
            else:
                log.info("cell %s, %s (%d training pairs), seed %d", arm, label, n, seed)
                results.append(run_cell(cfg, arm, label, n, seed, out))
            bar.update()
        for name, k, mode, seed in extra:
            done = out / "cells" / f"{name}.json"
            if done.is_file():
                subject_results.append(read_cell(done))
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
