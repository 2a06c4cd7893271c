"""``mindvis-distill``: latent consistency distillation of a fine-tuned DC-LDM into a few-step student.

Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models"), on the teacher's own conditioning:

* the **student** starts as a copy of the teacher's UNet and learns a consistency function
  ``f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t)``, with LCM's boundary scalings ``c_skip = s^2 / ((10 t)^2 + s^2)``,
  ``c_out = 10 t / sqrt((10 t)^2 + s^2)`` (s = 0.5), so that f is the identity at t = 0;
* the **teacher** solves the probability-flow ODE one DDIM step back on a skipping-step schedule: ``N`` solver steps
  (``distill.solver_steps``) at timesteps ``k - 1, 2k - 1, ..., T - 1`` with ``k = T / N``; from ``x_{t_{n+1}}``
  (a training latent noised to ``t_{n+1}``) it gives ``x_{t_n}``;
* optional **classifier-free guidance** in the teacher (``distill.guidance`` = w, 1 = none):
  ``eps = eps_null + w (eps_cond - eps_null)``. A DC-LDM was not trained with condition dropout, so its
  unconditional branch is defined here: ``distill.uncond=mean_fmri`` = the conditioner of the mean training fMRI (an
  uninformative scan, inside the distribution the conditioner was trained on; both the cross-attention context
  and the time-embedding offset come from it), or ``zero_context`` = zero context tokens and no time offset. An
  embedding-conditioned generator has a null token trained with 10 % dropout, and uses it;
* the **target** network is an exponential moving average of the student (``distill.ema_decay``); the loss is
  ``d(f_student(x_{t_{n+1}}, t_{n+1}), f_target(x_{t_n}, t_n))`` with d = pseudo-Huber
  (``sqrt(diff^2 + c^2) - c``, mean) or L2 (``distill.loss``).

The conditioning is the teacher's and stays frozen: for a DC-LDM, the fMRI tokens through cross-attention and the
time-embedding offset (``DCLDM.condition`` / ``predict_noise``); for a generator, its embedding conditioner. The
student (the EMA target network) is saved as a normal model folder of the teacher's kind with a ``sampler/`` folder
(diffusers' ``LCMScheduler`` on the teacher's noise schedule and ``N``), which ``mindvis-sample`` uses by default
(``--steps 1|2|4``).

Like every stage: a resolved ``config.yaml``, ``train.log``, progress bars, checkpoints written atomically
(``checkpoints/epoch-NNNN/{model, online, training_state.pt}``), ``--resume`` that repeats the uninterrupted run's
losses exactly, validation on the run's validation split (carved from training, as the teacher's run), ``best/``
(by ``train.select_metric``), ``model/`` (the last epoch), ``summary.json``.

The parts: :mod:`~mindvis.finetune.distill_lcd` (the objective), :mod:`~mindvis.finetune.distill_teachers` (the
models distilled), :mod:`~mindvis.finetune.distill_data` (a run's teacher, data and objective),
:mod:`~mindvis.finetune.distill_validation`; this module keeps the training loop and the command.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mindvis.config import ConfigError, build_config, save_config, to_plain
from mindvis.training import (STATE_NAME, EpochShuffleSampler, check_finite_loss, load_resume_checkpoint,
                              record_epoch, save_training_state, seed_epoch, start_run, write_checkpoint)
from mindvis.utils.io import atomic_dir, atomic_write_json
from mindvis.utils.plots import plot_history

from .config import DistillConfig, validate_distill

from .distill_data import Run
from .distill_lcd import update_ema
from .distill_teachers import _fingerprint, teacher_kind, teacher_run_config
from .distill_validation import Validator, evaluate_loss

log = logging.getLogger("mindvis.distill")


# ---------------------------------------------------------------------------------------------------- training
def distill(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """Distil as ``cfg`` says; returns the summary."""
    t0 = time.time()
    validate_distill(cfg)
    tc = cfg.train
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.distill")
    run = Run(cfg)
    log.info("teacher: %s (%s); data: %s", run.teacher_dir, run.kind, run.description)
    log.info("distillation: %d solver steps (k = %d), guidance %g, %s loss, EMA %g", cfg.distill.solver_steps,
             run.lcd.solver.k, cfg.distill.guidance, cfg.distill.loss, cfg.distill.ema_decay)
    teacher_fp = _fingerprint(run.teacher.unet)
    if main:
        save_config(cfg, run_dir / "config.yaml")
    student = run.new_student()
    target = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    history, start_epoch, best = [], 0, {"metric": float("inf"), "epoch": 0}
    if resume:
        from diffusers import UNet2DConditionModel

        def load(folder: Path):
            return (UNet2DConditionModel.from_pretrained(folder.parent / "online"),
                    UNet2DConditionModel.from_pretrained(folder.parent / "target"))

        ckpt, (online, saved_target), state = load_resume_checkpoint(run_dir, load)
        if state.get("teacher") != teacher_fp:
            raise ConfigError(f"the teacher {run.teacher_dir} changed since the run began (its UNet's weights differ "
                              "from the ones distilled so far)")
        student.load_state_dict(online.state_dict())
        target.load_state_dict(saved_target.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best = state["epoch"], state["history"], dict(state["best"])
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)
    validator = Validator(run, cfg) if main else None
    loader = DataLoader(run.train_ds, batch_size=tc.batch_size, sampler=EpochShuffleSampler(len(run.train_ds), tc.seed),
                        num_workers=cfg.data.num_workers, drop_last=len(run.train_ds) > tc.batch_size)
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    raw = accelerator.unwrap_model(student)
    target.to(accelerator.device)
    if tc.tracker != "none":
        accelerator.init_trackers("mindvis-distill", config=to_plain(cfg))

    def save_model(folder: Path, unet):
        run.teacher.save_student(unet, run.sampler_config, folder)

    if main and not resume and len(run.val_ds):  # the starting point: the teacher's UNet sampled as a student
        before = {"val_loss": evaluate_loss(run, target, tc.seed, tc.batch_size)} | validator(target, None)
        atomic_write_json(run_dir / "undistilled.json", before)
        log.info("before distillation (the teacher's UNet with %d LCM steps): %s", tc.sample_steps,
                 ", ".join(f"{k} {v:.4f}" for k, v in before.items()))

    for epoch in range(start_epoch, tc.epochs):
        seed_epoch(tc.seed, epoch, accelerator.process_index)
        loader.set_epoch(epoch)
        student.train()
        losses = []
        for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not main)):
            with accelerator.accumulate(student):
                with accelerator.autocast():
                    loss = run.batch_loss(student, target, batch)
                check_finite_loss(loss, epoch, step, tc.lr)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.clip_grad > 0:
                    accelerator.clip_grad_norm_(student.parameters(), tc.clip_grad)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                update_ema(target, raw, cfg.distill.ema_decay)
            losses.append(loss.item())
        mean = accelerator.gather(torch.tensor([np.mean(losses)], device=accelerator.device)).mean().item()
        entry = {"epoch": epoch + 1, "loss": mean, "time_s": round(time.time() - t0, 1)}
        last = epoch + 1 == tc.epochs
        if main and ((epoch + 1) % tc.val_every == 0 or last):
            entry["val_loss"] = evaluate_loss(run, target, tc.seed, tc.batch_size)
            entry |= validator(target, run_dir / "validation" / f"epoch-{epoch + 1:04d}.png")
            if tc.select_metric != "last":
                metric = entry.get(tc.select_metric)
                if metric is None:
                    raise KeyError(f"train.select_metric {tc.select_metric!r} is not logged; have {sorted(entry)}")
                metric = -metric if tc.select_metric == "val_pcc_identification" else metric  # lower is better
                if metric < best["metric"]:
                    best = {"metric": float(metric), "epoch": epoch + 1}
                    atomic_dir(run_dir / "best", lambda tmp: save_model(tmp, target))
                    log.info("new best %s %.4f at epoch %d", tc.select_metric, abs(metric), epoch + 1)
        record_epoch(history, entry, log, accelerator, tc.tracker)
        if (epoch + 1) % tc.checkpoint_every == 0 or last:
            accelerator.wait_for_everyone()
            if main:
                def fill(tmp: Path):
                    save_model(tmp / "model", target)
                    raw.save_pretrained(tmp / "online")
                    target.save_pretrained(tmp / "target")
                    save_training_state(tmp / STATE_NAME, optimizer, epoch + 1, history, best=best, teacher=teacher_fp)
                    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

                write_checkpoint(run_dir, epoch + 1, fill, tc.keep_checkpoints)
                plot_history(run_dir / "loss_curve.png", history, "latent consistency distillation")
            accelerator.wait_for_everyone()

    summary = {}
    if main:
        atomic_dir(run_dir / "model", lambda tmp: save_model(tmp, target))
        if tc.select_metric == "last" or not (run_dir / "best").is_dir():
            atomic_dir(run_dir / "best", lambda tmp: save_model(tmp, target))
            best = {"metric": None, "epoch": tc.epochs}
        summary = {"teacher": str(run.teacher_dir), "kind": run.kind, "selected_epoch": best["epoch"],
                   "select_metric": tc.select_metric,
                   "selected_value": None if best["metric"] is None else abs(best["metric"]),
                   "solver_steps": cfg.distill.solver_steps, "guidance": cfg.distill.guidance,
                   "epochs": tc.epochs, "seconds": round(time.time() - t0, 1), "data": run.description,
                   "first_loss": history[0]["loss"] if history else None,
                   "last_loss": history[-1]["loss"] if history else None,
                   "last_validation": next((h for h in reversed(history) if "val_loss" in h), None),
                   "undistilled_validation": (json.loads((run_dir / "undistilled.json").read_text())
                                              if (run_dir / "undistilled.json").is_file() else None)}
        atomic_write_json(run_dir / "summary.json", summary)
        plot_history(run_dir / "loss_curve.png", history, "latent consistency distillation")
        print(f"\ndistillation done: selected epoch {best['epoch']} ({tc.select_metric}); student: {run_dir / 'best'}\n"
              f"sample with: mindvis-sample --model {run_dir} --steps {tc.sample_steps} --out OUT", flush=True)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return summary


# ------------------------------------------------------------------------------------------------------- CLI
EPILOG = """\
overrides: any config key as key=value (mindvis-distill --print-config lists them all), e.g.
  distill.solver_steps=50 distill.guidance=1.5 distill.uncond=zero_context distill.loss=l2 distill.ema_decay=0.95
  train.epochs=40 train.lr=1e-4 train.sample_steps=2
The data settings default to the teacher run's (its config.yaml). Unknown keys and wrong types are errors.

examples:
  mindvis-distill --teacher runs/finetune/RUN                       # the synthetic preset
  mindvis-distill --teacher runs/finetune/RUN distill.guidance=1.5 distill.solver_steps=25
  mindvis-distill --teacher priors/synthetic-embedding               # an embedding-conditioned generator
  mindvis-distill --resume runs/distill/RUN
  mindvis-sample --model runs/distill/RUN --out runs/samples-student     # LCM, 4 steps by default
"""


def build_parser():
    import argparse

    from mindvis.training import add_run_arguments
    from mindvis.utils.cli import PlainHelpFormatter

    p = argparse.ArgumentParser(prog="mindvis-distill", epilog=EPILOG, formatter_class=PlainHelpFormatter,
                                description="Latent consistency distillation of a fine-tuned DC-LDM (or of an "
                                            "embedding-conditioned generator) into a student that samples in 1-4 "
                                            "steps.")
    p.add_argument("--teacher", metavar="DIR", help="a mindvis-finetune run (its best/), a DC-LDM folder, or a "
                                                    "generator folder (mindvis-train-prior --condition embedding); "
                                                    "sets teacher")
    add_run_arguments(p, "distill")
    return p


def resolve_config(args) -> DictConfig:
    """Defaults <- the teacher run's data settings <- preset (``--config``, default synthetic) <- overrides."""
    from mindvis.configs import preset_path

    if args.resume:
        return build_config(DistillConfig, Path(args.resume) / "config.yaml", list(args.overrides))
    preset = preset_path("distill", args.config or "synthetic")
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in (("teacher", args.teacher),
                                                                   ("output_dir", args.output_dir)) if v]
    first = build_config(DistillConfig, preset, overrides)
    defaults = None
    if first.teacher and teacher_kind(first.teacher) == "dcldm":
        run_cfg = teacher_run_config(first.teacher)
        if run_cfg is not None:
            from .config import FinetuneConfig

            teacher_cfg = build_config(FinetuneConfig, run_cfg)
            defaults = {"data": to_plain(teacher_cfg.data), "data_seed": teacher_cfg.train.seed}
    return build_config(DistillConfig, preset, overrides, defaults=defaults)


def main(argv=None) -> int:
    from mindvis.compat.ldm import PriorFormatError
    from mindvis.training import run_training_command

    return run_training_command("mindvis-distill", build_parser().parse_intermixed_args(argv), resolve_config, distill,
                                errors=(PriorFormatError,))


if __name__ == "__main__":
    sys.exit(main())
