"""Write MindEye2 reference fixtures by running MindEye2's own code (MedARC-AI/MindEyeV2).

Run in the reference venv (see README.md beside this file)::

    /work/refenv/mindeye2/bin/python tools/reference_fixtures/mindeye2.py \
        --reference /path/to/MindEyeV2   # a checkout or its bare git directory

It imports the reference's ``src/models.py`` and ``src/utils.py`` and executes, from ``src/Train.ipynb``, the
cells that define the model container (``MindEyeModule``), the per-subject ``RidgeRegression`` and
``model.backbone`` (``BrainNetwork``), the batch bookkeeping (iterations per epoch), and the optimizer groups,
OneCycle schedule and ``save_ckpt``. The prior is built as that notebook builds it (``PriorNetwork`` inside
``BrainDiffusionPrior``) at a small width. Two real optimizer steps are taken with the reference's losses on seeded
stand-in data (prior x 30 + BiMixCo + 0.5 x (L1 on the blurry latents + 0.1 x the ConvNeXt-contrastive term)),
the checkpoint is written by the reference's ``save_ckpt``, and every forward path is recorded.

Two models are written: a multi-subject one (2 subjects with different voxel counts, blurry branch on), the
layout of ``final_multisubject_subj0N``; and a single-subject one without the blurry branch (``--no-blurry_recon``,
the layout of a fine-tuned single-subject model with the low-level module off).

Small sizes need one departure, listed in ``shapes.json`` ("overrides"): the blurry branch's widths are written
into ``BrainNetwork.__init__`` (latent channels 64, decoder widths [32, 64, 128], maps-projector width 512); the
generator rebuilds those sub-modules after construction with the same classes and layer order at small widths
(the maps projector keeps its 512 outputs, which the forward's ``view(B, 49, 512)`` requires).

Unused imports stubbed: ``utils.py`` imports ``generative_models.sgm.util.append_dims`` (used only by the unCLIP
reconstruction helper), whose package import pulls in Stability's whole training stack.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CpuAccelerator, DenoiserLog, MaskLog, RandomLog, extract_reference, file_size, find_cell, notebook_code_cells,  # noqa: E402
                    npz_save, shrink_sequential, state_shapes, stub_module, versions, write_json)

REPO = Path(__file__).resolve().parents[2]

SIZES = dict(num_voxels=[40, 56], hidden=32, n_blocks=2, tokens=4, clip_dim=16, prior_depth=2, prior_heads=2,
             prior_dim_head=8, timesteps=100, blurry_channels=8, blurry_decoder_width=32, blurry_maps_width=16,
             batch=3, train_batch_per_subject=2)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def shrink_blurry(backbone, S, overrides):
    """Rebuild the blurry branch's hard-coded widths small (same classes, same layer order)."""
    from diffusers.models.vae import Decoder
    C, W = S["blurry_channels"], S["blurry_decoder_width"]
    side2 = backbone.blin1.out_features // backbone.bnorm.num_channels  # 7 x 7
    backbone.blin1 = nn.Linear(backbone.blin1.in_features, C * side2, bias=backbone.blin1.bias is not None)
    backbone.bnorm = nn.GroupNorm(backbone.bnorm.num_groups, C)
    old = backbone.bupsampler
    backbone.bupsampler = Decoder(in_channels=C, out_channels=old.conv_out.out_channels,
                                  up_block_types=[type(b).__name__ for b in old.up_blocks],
                                  block_out_channels=[W] * len(old.up_blocks),
                                  layers_per_block=len(old.up_blocks[0].resnets) - 1)
    last = [m for m in backbone.b_maps_projector if isinstance(m, nn.Conv2d)][-1]
    backbone.b_maps_projector = shrink_sequential(backbone.b_maps_projector, {512: S["blurry_maps_width"]},
                                                  keep_in=C, keep_out=last.out_channels)
    overrides += [f"BrainNetwork blurry latent channels 64 -> {C} (blin1, bnorm, bupsampler input, maps input)",
                  f"BrainNetwork.bupsampler block_out_channels [32, 64, 128] -> {[W] * len(old.up_blocks)}",
                  f"BrainNetwork.b_maps_projector hidden width 512 -> {S['blurry_maps_width']} (512 outputs kept)"]


def build(ns, models, cells, S, *, subjects, blurry, overrides):
    """Execute the notebook's model cells in ``ns`` for the given subjects; returns the model."""
    ns.update(num_voxels_list=list(subjects), hidden_dim=S["hidden"], n_blocks=S["n_blocks"],
              clip_emb_dim=S["clip_dim"], clip_seq_dim=S["tokens"], blurry_recon=blurry, clip_scale=1.0)
    for must in (["class MindEyeModule"], ["class RidgeRegression"], ["model.backbone = BrainNetwork"]):
        exec(compile(find_cell(cells, must), f"Train.ipynb[{must[0]}]", "exec"), ns)
    model = ns["model"]
    if blurry:
        shrink_blurry(model.backbone, S, overrides)
    # the prior, as Train.ipynb builds it (its cell fixes depth 6, dim_head 52, heads = 1664 // 52)
    prior_network = models.PriorNetwork(dim=S["clip_dim"], depth=S["prior_depth"], dim_head=S["prior_dim_head"],
                                        heads=S["prior_heads"], causal=False, num_tokens=S["tokens"],
                                        learned_query_mode="pos_emb")
    model.diffusion_prior = models.BrainDiffusionPrior(net=prior_network, image_embed_dim=S["clip_dim"],
                                                       condition_on_text_encodings=False, timesteps=S["timesteps"],
                                                       cond_drop_prob=0.2, image_embed_scale=None)
    return model


def train_and_save(ns, cells, utils, model, gen, S, *, multi_subject, outdir):
    """Batch bookkeeping, optimizer, schedule and save_ckpt from the notebook; two real steps; save."""
    subj_list = [2, 5] if multi_subject else [1]
    nvox = list(ns["num_voxels_list"])  # the iterations cell starts a new (empty) num_voxels_list
    ns.update(multi_subject=multi_subject, subj_list=subj_list, num_devices=1, num_sessions=40 if multi_subject else 1,
              batch_size=42 if multi_subject else 24)
    exec(compile(find_cell(cells, ["num_iterations_per_epoch ="]), "Train.ipynb[iterations]", "exec"), ns)
    acc = CpuAccelerator()
    ns.update(use_prior=True, max_lr=3e-4, lr_scheduler_type="cycle", num_epochs=150, outdir=str(outdir),
              accelerator=acc, model=model)
    exec(compile(find_cell(cells, ["no_decay", "def save_ckpt", "def load_ckpt"]), "Train.ipynb[optimizer]", "exec"),
         ns)
    ns["model"], ns["optimizer"], ns["lr_scheduler"] = acc.prepare(ns["model"], ns["optimizer"], ns["lr_scheduler"])
    model, optimizer, lr_scheduler = ns["model"], ns["optimizer"], ns["lr_scheduler"]
    losses, test_losses, lrs = [], [], []
    ns.update(losses=losses, test_losses=test_losses, lrs=lrs, epoch=0)
    b = S["train_batch_per_subject"]
    T, D = S["tokens"], S["clip_dim"]
    blurry = ns["blurry_recon"]
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        voxel_list, perms, betas_l, selects = [], [], [], []
        for v in nvox:  # BiMixCo within each subject, as the notebook mixes each subject's batch
            vox, perm, betas, select = utils.mixco(torch.randn(b, 1, v, generator=gen))
            voxel_list.append(vox), perms.append(perm), betas_l.append(betas), selects.append(select)
        perm, betas, select = torch.cat(perms), torch.cat(betas_l), torch.cat(selects)  # (no offset, as there)
        clip_target = torch.randn(b * len(nvox), T, D, generator=gen)
        voxel_ridge = torch.cat([model.ridge(voxel_list[si], si) for si in range(len(nvox))], dim=0)
        backbone, clip_voxels, blurry_image_enc_ = model.backbone(voxel_ridge)
        loss_prior, _ = model.diffusion_prior(text_embed=backbone, image_embed=clip_target)
        loss = 30 * loss_prior
        loss = loss + utils.mixco_nce(F.normalize(clip_voxels.flatten(1), dim=-1),
                                      F.normalize(clip_target.flatten(1), dim=-1), temp=.006, perm=perm, betas=betas,
                                      select=select)
        if blurry:
            image_enc_pred, transformer_feats = blurry_image_enc_
            image_enc = torch.randn(image_enc_pred.shape, generator=gen)
            cnx = torch.randn(transformer_feats.shape, generator=gen)
            cnx_aug = cnx + 0.1 * torch.randn(cnx.shape, generator=gen)
            cont = utils.soft_cont_loss(F.normalize(transformer_feats.reshape(-1, transformer_feats.shape[-1]), dim=-1),
                                        F.normalize(cnx.reshape(-1, cnx.shape[-1]), dim=-1),
                                        F.normalize(cnx_aug.reshape(-1, cnx.shape[-1]), dim=-1), temp=0.2)
            loss = loss + (F.l1_loss(image_enc_pred, image_enc) + 0.1 * cont) * 0.5
        acc.backward(loss)
        optimizer.step()
        losses.append(loss.item())
        lrs.append(optimizer.param_groups[0]["lr"])
        lr_scheduler.step()
    model.eval()
    with torch.no_grad():
        vr = model.ridge(torch.randn(b, 1, nvox[0], generator=gen), 0)
        backbone, clip_voxels, _ = model.backbone(vr)
        ct = torch.randn(b, T, D, generator=gen)
        lp, _ = model.diffusion_prior(text_embed=backbone, image_embed=ct)
        lc = utils.soft_clip_loss(F.normalize(clip_voxels.flatten(1), dim=-1), F.normalize(ct.flatten(1), dim=-1),
                                  temp=.006)
        test_losses.append((30 * lp + lc).item())
    ns["save_ckpt"]("last")
    path = Path(outdir) / "last.pth"
    if not path.is_file():
        raise SystemExit(f"the reference's save_ckpt did not write {path}")
    return path


def record(model, models, gen, S, rec, prefix, nvox, sample=True):
    """Inputs and outputs of every forward path of ``model`` (eval mode)."""
    B, T, D = S["batch"], S["tokens"], S["clip_dim"]
    model.eval()
    with torch.no_grad():
        for si, v in enumerate(nvox):
            x = torch.randn(B, 1, v, generator=gen)
            r = model.ridge(x, si)
            backbone, clip, blur = model.backbone(r)
            rec[f"{prefix}subj{si}_voxels"], rec[f"{prefix}subj{si}_ridge"] = x, r
            rec[f"{prefix}subj{si}_backbone"], rec[f"{prefix}subj{si}_clip"] = backbone, clip
            if model.backbone.blurry_recon:
                rec[f"{prefix}subj{si}_blurry"], rec[f"{prefix}subj{si}_blurry_aux"] = blur
    cond = rec[f"{prefix}subj0_backbone"]
    dp = model.diffusion_prior
    net = dp.net
    rec[f"{prefix}prior_x"] = torch.randn(B, T, D, generator=gen)
    rec[f"{prefix}prior_t"] = torch.tensor([0, 37, 99])[:B]
    with torch.no_grad():
        for name, (pb, pi) in {"cond": (0., 0.), "null": (1., 1.), "brain_dropped": (1., 0.),
                               "image_dropped": (0., 1.)}.items():
            rec[f"{prefix}prior_net_{name}"] = net(rec[f"{prefix}prior_x"], rec[f"{prefix}prior_t"], text_embed=cond,
                                                   brain_cond_drop_prob=pb, image_cond_drop_prob=pi)
        rec[f"{prefix}prior_net_cfg2"] = net.forward_with_cond_scale(rec[f"{prefix}prior_x"], rec[f"{prefix}prior_t"],
                                                                     text_embed=cond, cond_scale=2.0)
    rec[f"{prefix}loss_image_embed"] = torch.randn(B, T, D, generator=gen)
    rec[f"{prefix}loss_times"] = torch.tensor([5, 50, 95])[:B]
    rec[f"{prefix}loss_noise"] = torch.randn(B, T, D, generator=gen)
    dp.train()
    with torch.no_grad(), MaskLog(models) as masks:
        loss, pred = dp.p_losses(rec[f"{prefix}loss_image_embed"], rec[f"{prefix}loss_times"],
                                 text_cond=dict(text_embed=cond), noise=rec[f"{prefix}loss_noise"])
    dp.eval()
    if len(masks.masks) != 2:
        raise SystemExit(f"expected 2 keep masks in a training forward, got {len(masks.masks)}")
    rec[f"{prefix}loss_brain_keep"], rec[f"{prefix}loss_image_keep"] = masks.masks
    rec[f"{prefix}loss_value"], rec[f"{prefix}loss_pred"] = loss, pred
    if not sample:
        return
    cond = cond[:2]  # two samples keep the recorded trajectories small
    rec[f"{prefix}sample_cond"] = cond
    # recon_inference.ipynb: p_sample_loop(..., cond_scale=1., timesteps=20) -> dalle2's DDIM loop; and the full
    # 100-step DDPM loop that MindEye2's BrainDiffusionPrior overrides
    for tag, steps, cs in (("ddim20", 20, 1.0), ("ddim20_cfg2", 20, 2.0), ("ddpm", None, 1.0)):
        torch.manual_seed(1234)
        with RandomLog() as log, DenoiserLog(net) as trajectory, torch.no_grad():
            out = dp.p_sample_loop(cond.shape, text_cond=dict(text_embed=cond), cond_scale=cs, timesteps=steps)
        rec[f"{prefix}sample_{tag}_draws"] = log.stacked()
        for k, v in trajectory.arrays().items():
            rec[f"{prefix}sample_{tag}_steps_{k}"] = v
        rec[f"{prefix}sample_{tag}_out"] = out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="MindEyeV2 checkout or bare git directory")
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "mindeye2"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    S = SIZES

    src, commit = extract_reference(args.reference)
    sys.path.insert(0, str(src))
    stub_module("generative_models.sgm.util", append_dims=None)
    utils = load_module("utils", src / "utils.py")
    models = load_module("models", src / "models.py")
    cells = notebook_code_cells(src / "Train.ipynb")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    overrides: list[str] = []
    rec: dict = {}
    files = {}

    for name, subjects, blurry, multi in (("multisubject", S["num_voxels"], True, True),
                                          ("single_nolow", S["num_voxels"][:1], False, False)):
        ns = dict(torch=torch, nn=nn, np=np, os=os, utils=utils, BrainNetwork=models.BrainNetwork,
                  print=lambda *a, **k: None)
        model = build(ns, models, cells, S, subjects=subjects, blurry=blurry,
                      overrides=overrides if blurry else [])
        d = out / name
        d.mkdir(exist_ok=True)
        path = train_and_save(ns, cells, utils, model, gen, S, multi_subject=multi, outdir=d)
        record(ns["model"], models, gen, S, rec, f"{name}_", list(subjects), sample=multi)
        ck = torch.load(path, map_location="cpu")
        files[f"{name}/last.pth"] = {
            "bytes": file_size(path), "keys": list(ck), "subjects_voxels": list(subjects), "blurry_recon": blurry,
            "model_state_dict": {k: list(v.shape) for k, v in ck["model_state_dict"].items()},
            "lr_scheduler_keys": sorted(ck["lr_scheduler"]),
            "optimizer_param_groups": len(ck["optimizer_state_dict"]["param_groups"]),
            "num_iterations_per_epoch": int(ns["num_iterations_per_epoch"])}

    # the released configuration (final_subj01_pretrained_40sess_24bs: h 4096, 4 blocks, bigG 256 x 1664) on meta
    ns = dict(torch=torch, nn=nn, np=np, utils=utils, print=lambda *a, **k: None)
    exec(compile(find_cell(cells, ["class RidgeRegression"]).split("model.ridge =")[0], "Train.ipynb[ridge]", "exec"),
         ns)
    with torch.device("meta"):
        full = nn.Module()
        full.ridge = ns["RidgeRegression"]([15724], out_features=4096)
        full.backbone = models.BrainNetwork(h=4096, in_dim=4096, seq_len=1, n_blocks=4, clip_size=1664,
                                            out_dim=1664 * 256, blurry_recon=True, clip_scale=1)
        full.diffusion_prior = models.BrainDiffusionPrior(
            net=models.PriorNetwork(dim=1664, depth=6, dim_head=52, heads=1664 // 52, causal=False, num_tokens=256,
                                    learned_query_mode="pos_emb"),
            image_embed_dim=1664, condition_on_text_encodings=False, timesteps=100, cond_drop_prob=0.2,
            image_embed_scale=None)
    write_json(out / "full_size_shapes.json", {
        "final_subj01_pretrained_40sess_24bs": state_shapes(full),
        "param_counts": {k: sum(p.numel() for p in getattr(full, k).parameters())
                         for k in ("ridge", "backbone", "diffusion_prior")}})

    npz_save(out / "reference_outputs.npz", rec)
    files["reference_outputs.npz"] = {k: list(np.asarray(v).shape)
                                      for k, v in np.load(out / "reference_outputs.npz").items()}
    write_json(out / "shapes.json", {"reference": "MedARC-AI/MindEyeV2", "commit": commit, "versions": versions(),
                                     "seed": args.seed, "sizes": S, "overrides": overrides, "files": files})
    print(f"wrote {out}: " + ", ".join(f"{k} {v['bytes']} B" for k, v in files.items() if "bytes" in v)
          + f", npz {file_size(out / 'reference_outputs.npz')} B")


if __name__ == "__main__":
    main()
