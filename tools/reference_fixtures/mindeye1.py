"""Write MindEye1 reference fixtures by running MindEye1's own code (MedARC-AI/fMRI-reconstruction-NSD).

Run in the reference venv (see README.md beside this file)::

    /work/refenv/mindeye1/bin/python tools/reference_fixtures/mindeye1.py \
        --reference /path/to/fMRI-reconstruction-NSD   # a checkout or its bare git directory

It imports the reference's ``src/models.py`` and ``src/utils.py``, builds its voxel2clip (``BrainNetwork``), its
diffusion prior (``BrainDiffusionPrior`` over ``VersatileDiffusionPriorNetwork``) and its low-level
``Voxel2StableDiffusionModel`` at small sizes, makes the optimizer, the learning-rate schedule and the checkpoint
writer by executing the statements of ``Train_MindEye.ipynb`` and ``train_autoencoder.py`` that define them,
takes two real optimizer steps with the reference's losses on seeded stand-in data, saves the checkpoints with the
reference's own ``save_ckpt``, and records the inputs and outputs of every forward path.

Small sizes need three departures from the reference's code, each listed in ``shapes.json`` ("overrides"):

* the projector's hidden width (2048), the low-level model's latent channels (64) and its decoder widths
  ([64, 128, 256]), and the auxiliary maps projector's width (512) are written into the reference's
  constructors, not arguments: the generator rebuilds those sub-modules after construction with the same classes
  and layer order at small widths;
* ``VersatileDiffusionPriorNetwork.forward`` reshapes its inputs with a literal 768 (``view(B, -1, 768)``), a no-op
  for the (B, tokens, 768) inputs of the reference. The generator substitutes the network's own width for that
  literal (two substitutions, asserted) so the prior can run at width 16, and proves the substitution a no-op at
  768: the unmodified and the modified class give identical outputs on the same weights ("patch_noop_max_abs").
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CpuAccelerator, DenoiserLog, MaskLog, RandomLog, extract_reference, file_size, find_cell, notebook_code_cells,  # noqa: E402
                    npz_save, select_statements, shrink_sequential, state_shapes, stub_module, versions,
                    write_json)

REPO = Path(__file__).resolve().parents[2]

#: Small sizes of the fixtures (every other setting is the reference's).
SIZES = dict(num_voxels=40, hidden=32, n_blocks=2, tokens=4, clip_dim=16, projector_hidden=24,
             prior_depth=2, prior_heads=2, prior_dim_head=8, timesteps=100,
             lowlevel_hidden=16, lowlevel_blocks=2, lowlevel_channels=8, lowlevel_decoder_width=32,
             lowlevel_maps_width=16, batch=3, train_batch=4)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def patched_models_source(src: str) -> str:
    """models.py with the literal 768 of VersatileDiffusionPriorNetwork.forward's two reshapes replaced by the
    network's width (see the module docstring)."""
    pattern = re.compile(r"^(\s+)(image_embed|brain_embed) = \2\.view\(len\(\2\),\s*-1,\s*768\)", re.M)
    out, n = pattern.subn(lambda m: f"{m.group(1)}{m.group(2)} = {m.group(2)}.view(len({m.group(2)}),-1,self.dim)",
                          src)
    if n != 2:
        raise SystemExit(f"expected 2 reshapes with a literal 768 in models.py, found {n}")
    return out


def cls_normed_tokens(gen, b, t, d):
    """Stand-in CLIP targets with the reference's normalisation (all tokens divided by the class token's norm)."""
    x = torch.randn(b, t, d, generator=gen)
    return x / torch.norm(x[:, 0], dim=-1).reshape(-1, 1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="fMRI-reconstruction-NSD checkout or bare git directory")
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "mindeye1"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    S = SIZES

    src, commit = extract_reference(args.reference)
    sys.path.insert(0, str(src))
    stub_module("clip_retrieval.clip_client", ClipClient=None)  # LAION retrieval client: imported by utils, unused
    original_source = (src / "models.py").read_text()
    (src / "models_unpatched.py").write_text(original_source)
    (src / "models.py").write_text(patched_models_source(original_source))
    models = load_module("models", src / "models.py")
    models_unpatched = load_module("models_unpatched", src / "models_unpatched.py")
    utils = load_module("utils", src / "utils.py")
    cells = notebook_code_cells(src / "Train_MindEye.ipynb")
    ae_script = (src / "train_autoencoder.py").read_text()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    V, H, T, D = S["num_voxels"], S["hidden"], S["tokens"], S["clip_dim"]
    overrides = []

    # ---- voxel2clip + prior, as Train_MindEye builds them (hidden=True: the 257 x 768 recipe) ----
    voxel2clip = models.BrainNetwork(in_dim=V, out_dim=T * D, clip_size=D, h=H, n_blocks=S["n_blocks"],
                                     use_projector=True)
    voxel2clip.projector = shrink_sequential(voxel2clip.projector, {2048: S["projector_hidden"]})
    overrides.append(f"voxel2clip.projector hidden 2048 -> {S['projector_hidden']} (rebuilt, same layers)")
    prior_network = models.VersatileDiffusionPriorNetwork(
        dim=D, depth=S["prior_depth"], dim_head=S["prior_dim_head"], heads=S["prior_heads"], causal=False,
        num_tokens=T, learned_query_mode="pos_emb")
    diffusion_prior = models.BrainDiffusionPrior(
        net=prior_network, image_embed_dim=D, condition_on_text_encodings=False, timesteps=S["timesteps"],
        cond_drop_prob=0.2, image_embed_scale=None, voxel2clip=voxel2clip)
    overrides.append("VersatileDiffusionPriorNetwork.forward: view(B, -1, 768) -> view(B, -1, self.dim)")

    # the reference's optimizer groups, OneCycle schedule and checkpoint writer (Train_MindEye.ipynb)
    model_cell = find_cell(cells, ["no_decay", "OneCycleLR", "def save_ckpt"])
    code = select_statements(model_cell, assigns=("no_decay", "opt_grouped_parameters", "optimizer",
                                                   "global_batch_size"),
                             functions=("save_ckpt",), ifs_testing=("lr_scheduler_type",))
    acc = CpuAccelerator()
    prior_dir = out / "prior"
    prior_dir.mkdir(exist_ok=True)
    ns = dict(torch=torch, nn=nn, np=np, os=__import__("os"), diffusion_prior=diffusion_prior, max_lr=3e-4,
              lr_scheduler_type="cycle", num_epochs=240, num_train=8559 + 300, batch_size=32, num_devices=1,
              accelerator=acc, outdir=str(prior_dir), print=lambda *a, **k: None)
    exec(compile(code, "Train_MindEye.ipynb[model cell]", "exec"), ns)
    ns["diffusion_prior"], ns["optimizer"], ns["lr_scheduler"] = acc.prepare(
        ns["diffusion_prior"], ns["optimizer"], ns["lr_scheduler"])
    dp, optimizer, lr_scheduler = ns["diffusion_prior"], ns["optimizer"], ns["lr_scheduler"]
    losses, val_losses, lrs = [], [], []
    ns.update(losses=losses, val_losses=val_losses, lrs=lrs, epoch=0)

    # two training steps as Train_MindEye takes them in its BiMixCo epochs (loss = BiMixCo + 30 x prior)
    B = S["train_batch"]
    dp.train()
    for _ in range(2):
        optimizer.zero_grad()
        voxel = torch.randn(B, V, generator=gen)
        voxel, perm, betas, select = utils.mixco(voxel)
        clip_target = cls_normed_tokens(gen, B, T, D)
        clip_voxels, clip_voxels_proj = dp.voxel2clip(voxel)
        clip_voxels = clip_voxels.view(len(voxel), -1, D)
        loss_prior, _ = dp(text_embed=clip_voxels, image_embed=clip_target)
        loss_nce = utils.mixco_nce(F.normalize(clip_voxels_proj.flatten(1), dim=-1),
                                   F.normalize(clip_target.flatten(1), dim=-1), temp=.006, perm=perm,
                                   betas=betas, select=select)
        loss = loss_nce + 30 * loss_prior
        acc.backward(loss)
        optimizer.step()
        losses.append(loss.item())
        lrs.append(optimizer.param_groups[0]["lr"])
        lr_scheduler.step()
    dp.eval()
    with torch.no_grad():
        voxel = torch.randn(B, V, generator=gen)
        clip_target = cls_normed_tokens(gen, B, T, D)
        clip_voxels, clip_voxels_proj = dp.voxel2clip(voxel)
        val_prior, _ = dp(text_embed=clip_voxels.view(B, -1, D), image_embed=clip_target)
        val_nce = utils.mixco_nce(F.normalize(clip_voxels_proj.flatten(1), dim=-1),
                                  F.normalize(clip_target.flatten(1), dim=-1), temp=.006)
        val_losses.append((val_nce + 30 * val_prior).item())
    ns["save_ckpt"]("last")
    prior_ckpt = prior_dir / "last.pth"
    if not prior_ckpt.is_file():
        raise SystemExit("the reference's save_ckpt did not write last.pth")

    # ---- forward paths of the trained prior checkpoint ----
    Bt = S["batch"]
    rec = {}
    rec["voxels"] = torch.randn(Bt, V, generator=gen)
    with torch.no_grad():
        backbone, proj = voxel2clip(rec["voxels"])
    rec["v2c_backbone"], rec["v2c_projector"] = backbone, proj
    cond = backbone.view(Bt, -1, D)
    rec["prior_x"] = torch.randn(Bt, T, D, generator=gen) * math.sqrt(D)
    rec["prior_t"] = torch.tensor([0, 37, 99])[:Bt]
    net = dp.net
    with torch.no_grad():
        for name, (pb, pi) in {"cond": (0., 0.), "null": (1., 1.), "brain_dropped": (1., 0.),
                               "image_dropped": (0., 1.)}.items():
            rec[f"prior_net_{name}"] = net(rec["prior_x"], rec["prior_t"], text_embed=cond,
                                           brain_cond_drop_prob=pb, image_cond_drop_prob=pi)
        rec["prior_net_cfg2"] = net.forward_with_cond_scale(rec["prior_x"], rec["prior_t"], text_embed=cond,
                                                            cond_scale=2.0)
    # training loss for fixed times and noise; the classifier-free-guidance keep masks are recorded
    rec["loss_image_embed"] = cls_normed_tokens(gen, Bt, T, D)
    rec["loss_times"] = torch.tensor([5, 50, 95])[:Bt]
    rec["loss_noise"] = torch.randn(Bt, T, D, generator=gen)
    dp.train()
    with torch.no_grad(), MaskLog(models) as masks:
        loss, pred = dp.p_losses(rec["loss_image_embed"] * dp.image_embed_scale, rec["loss_times"],
                                 text_cond=dict(text_embed=cond), noise=rec["loss_noise"])
    dp.eval()
    if len(masks.masks) != 2:
        raise SystemExit(f"expected 2 keep masks in a training forward, got {len(masks.masks)}")
    rec["loss_brain_keep"], rec["loss_image_keep"] = masks.masks
    rec["loss_value"], rec["loss_pred"] = loss, pred
    rec["image_embed_scale"] = torch.tensor(float(dp.image_embed_scale))
    # the sampling loop of Reconstructions.py / utils.reconstruction (100 DDPM steps, a seeded generator)
    cond = cond[:2]  # two samples keep the recorded trajectories small
    for tag, cs in (("", 1.0), ("_cfg2", 2.0)):
        g = torch.Generator().manual_seed(args.seed + 7)
        with RandomLog() as log, DenoiserLog(dp.net) as steps, torch.no_grad():
            sample = dp.p_sample_loop(cond.shape, text_cond=dict(text_embed=cond), cond_scale=cs,
                                      timesteps=S["timesteps"], generator=g)
        rec[f"sample{tag}_draws"] = log.stacked()
        for k, v in steps.arrays().items():
            rec[f"sample{tag}_steps_{k}"] = v
        rec[f"sample{tag}_out"] = sample
    rec["sample_cond"] = cond

    # the 768 literal: the unmodified class and the modified one agree at width 768
    kw = dict(dim=768, depth=1, dim_head=8, heads=1, causal=False, num_tokens=2, learned_query_mode="pos_emb")
    a = models_unpatched.VersatileDiffusionPriorNetwork(**kw).eval()
    b = models.VersatileDiffusionPriorNetwork(**kw).eval()
    b.load_state_dict(a.state_dict())
    xa, ca = torch.randn(2, 2, 768, generator=gen), torch.randn(2, 2, 768, generator=gen)
    with torch.no_grad():
        noop = (a(xa, torch.tensor([3, 60]), text_embed=ca) - b(xa, torch.tensor([3, 60]), text_embed=ca)).abs().max()
    del a, b

    # ---- low-level: Voxel2StableDiffusionModel (4x, with the ConvNeXt-contrastive maps projector) ----
    from diffusers.models.vae import Decoder
    C, W = S["lowlevel_channels"], S["lowlevel_decoder_width"]
    v2sd = models.Voxel2StableDiffusionModel(in_dim=V, h=S["lowlevel_hidden"], n_blocks=S["lowlevel_blocks"],
                                             use_cont=True, ups_mode="4x")
    old = v2sd.upsampler
    side2 = v2sd.lin1.out_features // v2sd.norm.num_channels  # 16 x 16
    v2sd.lin1 = nn.Linear(v2sd.lin1.in_features, C * side2, bias=v2sd.lin1.bias is not None)
    v2sd.norm = nn.GroupNorm(v2sd.norm.num_groups, C)
    v2sd.upsampler = Decoder(in_channels=C, out_channels=old.conv_out.out_channels,
                             up_block_types=[type(b).__name__ for b in old.up_blocks],
                             block_out_channels=[W] * len(old.up_blocks),
                             layers_per_block=len(old.up_blocks[0].resnets) - 1)
    v2sd.maps_projector = shrink_sequential(v2sd.maps_projector, {512: S["lowlevel_maps_width"]}, keep_in=C,
                                            keep_out=S["lowlevel_maps_width"])
    overrides += [f"Voxel2StableDiffusionModel latent channels 64 -> {C} (lin1, norm, upsampler input)",
                  f"Voxel2StableDiffusionModel.upsampler block_out_channels [64, 128, 256] -> {[W] * 3}",
                  f"Voxel2StableDiffusionModel.maps_projector width 512 -> {S['lowlevel_maps_width']}"]
    del old
    ae_code = select_statements(ae_script, assigns=("no_decay", "opt_grouped_parameters", "optimizer",
                                                     "lr_scheduler"), functions=("save_ckpt",))
    ae_dir = out / "autoencoder"
    ae_dir.mkdir(exist_ok=True)
    import os
    import shutil
    import traceback
    ae_ns = dict(torch=torch, nn=nn, os=os, shutil=shutil, traceback=traceback, voxel2sd=v2sd, max_lr=5e-4,
                 num_epochs=120, num_train=8559 + 300, batch_size=8, num_devices=1, outdir=str(ae_dir),
                 local_rank=0, print=lambda *a, **k: None)
    exec(compile(ae_code, "train_autoencoder.py[optimizer, schedule, save_ckpt]", "exec"), ae_ns)
    ae_opt, ae_sched = ae_ns["optimizer"], ae_ns["lr_scheduler"]
    ae_losses, ae_val_losses, ae_lrs = [], [], []
    ae_ns.update(losses=ae_losses, val_losses=ae_val_losses, lrs=ae_lrs, epoch=0)
    v2sd.train()
    for _ in range(2):
        ae_opt.zero_grad()
        voxel = torch.randn(B, V, generator=gen)
        image_enc = torch.randn(B, 4, 4 * int(math.isqrt(side2)), 4 * int(math.isqrt(side2)), generator=gen)
        image_enc_pred, feats = v2sd(voxel, return_transformer_feats=True)
        cnx = torch.randn(B, feats.shape[1], feats.shape[2], generator=gen)
        cnx_aug = cnx + 0.1 * torch.randn(cnx.shape, generator=gen)
        cont_loss = utils.soft_cont_loss(F.normalize(feats.reshape(-1, feats.shape[-1]), dim=-1),
                                         F.normalize(cnx.reshape(-1, cnx.shape[-1]), dim=-1),
                                         F.normalize(cnx_aug.reshape(-1, cnx.shape[-1]), dim=-1),
                                         temp=0.075, distributed=False)
        l1 = F.l1_loss(image_enc_pred, image_enc)
        loss = l1 / 0.18215 + 0.1 * cont_loss
        ae_losses.append(loss.item())
        ae_lrs.append(ae_opt.param_groups[0]["lr"])
        loss.backward()
        ae_opt.step()
        ae_sched.step()
    v2sd.eval()
    with torch.no_grad():
        ae_val_losses.append(F.mse_loss(v2sd(torch.randn(B, V, generator=gen)), image_enc).item())
    ae_ns["save_ckpt"]("epoch001")
    ae_ckpt = ae_dir / "epoch001.pth"
    if not ae_ckpt.is_file():
        raise SystemExit("the reference's save_ckpt did not write epoch001.pth")
    with torch.no_grad():
        lat, aux = v2sd(rec["voxels"], return_transformer_feats=True)
    rec["lowlevel_latents"], rec["lowlevel_aux"] = lat, aux

    # ---- the released configurations' key names and shapes (meta tensors: no memory) ----
    with torch.device("meta"):
        full_v2c = models_unpatched.BrainNetwork(in_dim=15724, out_dim=257 * 768, clip_size=768, use_projector=True)
        full_net = models_unpatched.VersatileDiffusionPriorNetwork(dim=768, depth=6, dim_head=64, heads=12,
                                                                    causal=False, num_tokens=257,
                                                                    learned_query_mode="pos_emb")
        full_prior = models_unpatched.BrainDiffusionPrior(net=full_net, image_embed_dim=768,
                                                          condition_on_text_encodings=False, timesteps=100,
                                                          cond_drop_prob=0.2, image_embed_scale=None,
                                                          voxel2clip=full_v2c)
        full_ae = models_unpatched.Voxel2StableDiffusionModel(in_dim=15724, use_cont=True, ups_mode="4x")
    full = {"prior_257": state_shapes(full_prior), "autoencoder_4x_cont": state_shapes(full_ae),
            "param_counts": {"voxel2clip": sum(p.numel() for p in full_v2c.parameters()),
                             "prior_net": sum(p.numel() for p in full_net.parameters()),
                             "autoencoder": sum(p.numel() for p in full_ae.parameters())}}
    write_json(out / "full_size_shapes.json", full)

    npz_save(out / "reference_outputs.npz", rec)
    ck = torch.load(prior_ckpt, map_location="cpu")
    ae = torch.load(ae_ckpt, map_location="cpu")
    meta = {
        "reference": "MedARC-AI/fMRI-reconstruction-NSD", "commit": commit, "versions": versions(),
        "seed": args.seed, "sizes": S, "overrides": overrides, "patch_noop_max_abs": float(noop),
        "files": {
            "prior/last.pth": {"bytes": file_size(prior_ckpt), "keys": list(ck),
                               "model_state_dict": {k: list(v.shape) for k, v in ck["model_state_dict"].items()},
                               "lr_scheduler_keys": sorted(ck["lr_scheduler"]),
                               "optimizer_param_groups": len(ck["optimizer_state_dict"]["param_groups"])},
            "autoencoder/epoch001.pth": {"bytes": file_size(ae_ckpt), "keys": list(ae),
                                         "model_state_dict": {k: list(v.shape)
                                                              for k, v in ae["model_state_dict"].items()}},
            "reference_outputs.npz": {k: list(np.asarray(v).shape) for k, v in
                                      np.load(out / "reference_outputs.npz").items()},
        },
        "sampling": {"draws": int(rec["sample_draws"].shape[0]), "timesteps": S["timesteps"],
                     "generator_seed": args.seed + 7},
    }
    write_json(out / "shapes.json", meta)
    print(f"wrote {out}: prior {file_size(prior_ckpt)} B, autoencoder {file_size(ae_ckpt)} B, "
          f"npz {file_size(out / 'reference_outputs.npz')} B; 768-patch no-op max |diff| = {float(noop)}")


if __name__ == "__main__":
    main()
