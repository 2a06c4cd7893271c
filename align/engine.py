"""The alignment engine: fit a decoder from fMRI to an image embedding space, select it on validation, and score
retrieval on the test set once.

Ridge is fitted in closed form (penalty by k-fold cross-validation on the training split). The MLP and SC-MBM
decoders train by gradient descent on ``lambda * contrastive + (1 - lambda) * MSE``; the epoch is selected on the
validation split (whole classes carved from training, as stage B). Test-time averaging: the test fMRI of the
first r repetitions is averaged, r = 1..R, and decoded.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mindvis.config import save_config
from mindvis.finetune.data import build_stage_b_data
from mindvis.training import start_run
from mindvis.utils.io import atomic_write, atomic_write_json, atomic_write_text
from mindvis.utils.plots import plot_history

from .config import MINDEYE_DECODERS
from .data import embed_images, gallery_images, split_test_trials, vectorised
from .decoders import decode
from .reports import _fmt, markdown_report, plot_averaging, retrieval_grid
from .scoring import averaging_curve, gallery_scores, large_set_scores, score_split
from .settings import validate
from .time_resolved import plot_time_resolved, time_resolved
from .training import fit

log = logging.getLogger("mindvis.align")


def align(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """Fit, select on validation, score the test set once; returns the report."""
    t0 = time.time()
    validate(cfg)
    if cfg.decoder.name in MINDEYE_DECODERS:  # the MindEye recipes: their own data, training and report
        from .mindeye import align_mindeye

        return align_mindeye(cfg, resume, run_name)
    tc = cfg.train
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.align")
    stage_a = None  # the SC-MBM encoder (architecture, weights), read once
    if cfg.decoder.name == "mbm":
        from mindvis.finetune.engine import load_encoder

        stage_a = load_encoder(cfg.decoder.encoder, cfg.decoder.encoder_variant, "decoder.encoder")
    full = build_stage_b_data(cfg.data, stage_a[0].patch_size if stage_a else 16, tc.seed)
    data = vectorised(cfg, full)
    test, trials = split_test_trials(data.test)
    log.info("data: %s", data.description)
    if main and not resume:  # a resumed run keeps its config.yaml, whatever happens next
        save_config(cfg, run_dir / "config.yaml")
    gallery = gallery_images(cfg, data.train)
    emb = embed_images(cfg, {"train": data.train.images, "val": data.val.images, "test": test.images,
                             "gallery": gallery} | ({"large": data.large.images} if data.large is not None else {}))
    emb = {k: v.reshape(len(v), -1) for k, v in emb.items()}  # token spaces (N, T, D) as one vector per image
    dim = emb["train"].shape[1]
    log.info("target %s: %d dims; %d train / %d val / %d test images", cfg.target, dim, len(emb["train"]),
             len(emb["val"]), len(emb["test"]))
    model, history, best, selection = fit(cfg, data, emb, stage_a, accelerator, run_dir, main, bool(resume))
    report = {}
    if main:
        ev = cfg.eval
        scores = {}
        for split, s in (("val", data.val), ("test", test)):
            if len(s) < 2:
                continue
            scores[split] = decode(model, s.fmri, subjects=s.subjects)
            report[split] = score_split(scores[split], emb[split], ev, tc.seed, s.subjects)
            report[f"{split}_items"] = len(s)
        if "test" in scores:  # the test images among the test and gallery images (per subject)
            report["test"] |= gallery_scores(scores["test"]["contrastive"], emb["test"], emb["gallery"], test.subjects)
        if "test" in scores and data.large is not None:  # Benchetrit et al.'s large set: held-out test-concept trials
            pred = decode(model, data.large.fmri, subjects=data.large.subjects)["contrastive"]
            report["test"] |= large_set_scores(pred, data.large.ids, emb["large"], data.large.subjects)
        curve = []
        if trials is not None:
            curve = averaging_curve(model, trials, emb["test"], test.subjects)
            plot_averaging(run_dir / "averaging.png", curve)
        if cfg.windows.length > 0:
            report["time_resolved"] = time_resolved(cfg, full, emb, accelerator, run_dir, main)
            plot_time_resolved(run_dir / "time_resolved.png", report["time_resolved"],
                               f"time-resolved decoding ({cfg.decoder.name}, {cfg.windows.length:g}-s windows)")
            atomic_write_json(run_dir / "time_resolved.json", report["time_resolved"])
        report |= {"decoder": cfg.decoder.name, "target": cfg.target, "data": data.description,
                   "selection": selection, "selected_epoch": best["epoch"], "averaging": curve,
                   "seconds": round(time.time() - t0, 1), "history": history}
        atomic_write_json(run_dir / "retrieval.json", report)
        atomic_write_text(run_dir / "retrieval.md", markdown_report(report))
        if "test" in scores:
            dec = scores["test"]
            arrays = {"contrastive": dec["contrastive"], "regression": dec["regression"], "target": emb["test"],
                      "ids": np.array(test.ids), "subjects": np.array(test.subjects)}
            atomic_write(run_dir / "test_embeddings.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
            retrieval_grid(run_dir / "retrieval_top5.png", dec["contrastive"], test.images, emb["test"], test.images,
                           ev.show, own=np.arange(len(test)))
            retrieval_grid(run_dir / "gallery_top5.png", dec["contrastive"], test.images, emb["gallery"], gallery,
                           ev.show)
        if history:
            plot_history(run_dir / "loss_curve.png", history, f"mindvis-align ({cfg.decoder.name})")
        t1 = report.get("test", {}).get("top1_brain_to_image", {})
        print(f"\nalign done ({cfg.decoder.name} -> {cfg.target}): test top-1 brain->image "
              f"{_fmt(t1.get('value'))} (chance {_fmt(t1.get('chance'))}); {selection}\nrun folder: {run_dir}",
              flush=True)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return report
