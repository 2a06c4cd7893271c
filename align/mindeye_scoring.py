"""Scoring a MindEye model on the test set: decoding with MindEye's averaging, retrieval of the contrastive head
and of the prior's samples, the averaging curve, the low-level branch, test_embeddings.npz and the report; and
``mindvis-align --score RUN`` (scoring an existing MindEye folder: a trained run or a ``mindvis-convert
from-mindeye1/2`` folder)."""
from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mindvis.config import ConfigError, save_config
from mindvis.data.fmri import DataError
from mindvis.data.pairs import PairedSplit
from mindvis.utils.io import atomic_write, atomic_write_json, atomic_write_text

from .config import MINDEYE_DECODERS
from .mindeye_data import _embed, blurry_embedder, decode_items, load_subject, test_groups, token_embedder
from .mindeye_decode import retrieval_top, sample_prior
from .mindeye_models import load_model_folder
from .reports import _fmt, markdown_report, plot_averaging, retrieval_grid
from .scoring import score_split

log = logging.getLogger("mindvis.align")


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).reshape(len(a), -1)


def score_test(cfg: DictConfig, family: str, network, prior, test: PairedSplit, targets: np.ndarray,
               blurry_targets: np.ndarray | None, run_dir: Path) -> dict:
    """Decode the test set (MindEye's averaging), score retrieval of the contrastive head and of the prior's
    samples, the averaging curve; write test_embeddings.npz and retrieval_top5.png. Returns the report's parts."""
    me, ev = cfg.mindeye, cfg.eval
    avg, rows, groups, singles = test_groups(test)
    average = me.test_average if singles else "fmri"
    if me.test_average == "outputs" and not singles:
        log.warning("the test split has no single trials (data.include_test_trials=false): decoding the "
                    "repetition-averaged fMRI instead of averaging the outputs of every repetition")
    dec = decode_items(family, network, rows, groups, average)
    tgt = _flat(targets)
    out = {"test": score_split({"contrastive": _flat(dec["contrastive"]), "regression": _flat(dec["regression"])},
                               tgt, ev, cfg.train.seed),
           "test_items": len(avg), "test_average": ("model outputs of every repetition averaged" if average == "outputs"
                                                     else "fMRI averaged over the repetitions, then decoded")}
    arrays = {"contrastive": _flat(dec["contrastive"]).astype(np.float16), "target": tgt.astype(np.float16),
              "regression": dec["regression"].astype(np.float16), "ids": np.array(avg.ids)}
    if prior is not None and me.prior_sample_test:
        t0 = time.time()
        samples = sample_prior(prior, dec["regression"], cfg.train.seed)
        out["test_prior"] = score_split({"contrastive": _flat(samples), "regression": _flat(samples)}, tgt, ev,
                                        cfg.train.seed)
        out["prior_sampler"] = (f"{prior.config.sample_steps} "
                                f"{'ancestral DDPM' if prior.config.sample_steps >= prior.config.timesteps else 'strided DDIM'}"
                                f" steps, {time.time() - t0:.1f} s")
        arrays["prior"] = samples.astype(np.float16)
    if "blurry" in dec:
        arrays["blurry"] = dec["blurry"].astype(np.float32)
        if blurry_targets is not None:
            bt = np.asarray(blurry_targets, dtype=np.float32)
            out["test_blurry"] = {"l1": float(np.abs(dec["blurry"] - bt).mean()),
                                  "pixel_correlation": float(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1]
                                                                      for a, b in zip(dec["blurry"], bt)]))}
    counts = {len(g) for g in groups}
    curve = []
    if singles and len(counts) == 1 and counts.pop() > 1:
        for r in range(1, len(groups[0]) + 1):
            d = decode_items(family, network, rows, groups, average, first=r)
            curve.append({"repetitions": r, **{k: v for k, v in retrieval_top(d["contrastive"], targets).items()}})
        plot_averaging(run_dir / "averaging.png", curve)
    out["averaging"] = curve
    atomic_write(run_dir / "test_embeddings.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    retrieval_grid(run_dir / "retrieval_top5.png", _flat(dec["contrastive"]), avg.images, tgt, avg.images, ev.show,
                   own=np.arange(len(avg)))
    return out


def mindeye_markdown(report: dict) -> str:
    text = markdown_report(report)
    extra = []
    if "test_prior" in report:
        extra += ["", f"## test, the diffusion prior's samples ({report.get('prior_sampler', '')}) against the targets",
                  "", "| metric | value | std | chance |", "|---|---|---|---|"]
        for name, m in report["test_prior"].items():
            extra.append(f"| {name} | {_fmt(m['value'])} | {_fmt(m.get('std'))} | {_fmt(m['chance'])} |")
    if "test_blurry" in report:
        b = report["test_blurry"]
        extra += ["", f"low-level branch on the test set: L1 {b['l1']:.4f}, pixel correlation "
                      f"{b['pixel_correlation']:.4f}"]
    extra += ["", f"test-time averaging: {report.get('test_average')}"]
    return text + "\n".join(extra) + "\n"


def _write_report(report: dict, run_dir: Path) -> None:
    atomic_write_json(run_dir / "retrieval.json", report)
    atomic_write_text(run_dir / "retrieval.md", mindeye_markdown(report))


def _print_done(report: dict, run_dir: Path) -> None:
    t1 = report.get("test", {}).get("top1_brain_to_image", {})
    p1 = report.get("test_prior", {}).get("top1_brain_to_image", {})
    prior = f"; prior samples {_fmt(p1.get('value'))}" if p1 else ""
    print(f"\nalign done ({report['decoder']} -> {report['target']}): test top-1 brain->image "
          f"{_fmt(t1.get('value'))} (chance {_fmt(t1.get('chance'))}){prior}; {report['selection']}\n"
          f"run folder: {run_dir}", flush=True)


def score_folder(cfg: DictConfig, run: str | Path, name: str | None = None) -> dict:
    """``mindvis-align --score RUN``: decode the test set of ``cfg``'s data with RUN's MindEye model (a trained run
    or a mindvis-convert folder) and write the report into RUN/scores/NAME/ (NAME: date and time by default)."""
    t0 = time.time()
    run = Path(run)
    model_dir = run / "model" if (run / "model" / "mindeye.json").is_file() else run
    saved = load_model_folder(model_dir)
    family = saved["family"]
    if family not in MINDEYE_DECODERS:
        raise DataError(f"{model_dir / 'mindeye.json'}: unknown family {family!r}")
    out = run / "scores" / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    if out.exists():
        raise FileExistsError(f"{out} exists already: give another --run-name (scores are never replaced)")
    cfg.decoder.name = family
    if not cfg.data.path and cfg.data.dataset == "nsd":
        raise DataError("give the prepared NSD subject to score on: --data-path DIR (mindvis-prep nsd)")
    data = load_subject(cfg, val_fraction=0.0)
    network, prior = saved["network"], saved["prior"]
    voxels = network.config.num_voxels if family == "mindeye1" else network.config.num_voxels[0]
    if data.num_voxels != voxels:
        raise DataError(f"{cfg.data.path}: {data.num_voxels} voxels, but the model's (first) adapter reads "
                        f"{voxels}; score a subject with the model's voxel selection")
    embedder = token_embedder(cfg)
    test_items = test_groups(data.test)[0]
    tgt = _embed(embedder, test_items.images, cfg)
    shape = (network.config.tokens, network.config.clip_dim)
    if tgt.ndim != 3 or tuple(tgt.shape[1:]) != shape:
        raise ConfigError(f"target={cfg.target} gives {tuple(tgt.shape[1:])} per image; the model outputs {shape} "
                          "tokens (MindEye1: clip-vit-l-14-tokens, MindEye2: openclip-bigg-14-tokens)")
    blur_t = None
    if family == "mindeye2" and network.config.blurry_recon and cfg.mindeye.blurry and cfg.mindeye.blurry_target:
        blur_emb = blurry_embedder(cfg)
        blur_t = _embed(blur_emb, test_items.images, cfg) if blur_emb is not None else None
    out.mkdir(parents=True)
    report = score_test(cfg, family, network.eval(), prior.eval() if prior is not None else None, data.test, tgt,
                        blur_t, out)
    report |= {"decoder": family, "target": cfg.target, "data": data.description, "model": str(model_dir),
               "source": saved["meta"].get("source", str(run)), "selection": "the model as saved",
               "selected_epoch": saved["meta"].get("epoch"), "seconds": round(time.time() - t0, 1)}
    save_config(cfg, out / "config.yaml")
    _write_report(report, out)
    _print_done(report, out)
    return report
