"""The networks, prior and optimisation of the MindEye recipes from ``mindeye.*`` (the prior's config, the
MindEye1 / MindEye2 network, the references' AdamW groups and OneCycleLR), and MindEye model folders (saving and
loading the components)."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from mindvis.mindeye_recipe import mindeye_param_groups
from mindvis.models.mindeye1 import MindEye1Config, MindEye1Network
from mindvis.models.mindeye2 import MindEye2Config, MindEye2Network
from mindvis.models.mindeye_prior import MindEyePriorConfig
from mindvis.utils.io import atomic_write_json


def prior_config(me: DictConfig, family: str, tokens: int, dim: int) -> MindEyePriorConfig:
    """The prior of ``mindeye.*`` for T x D tokens: heads = D // prior_dim_head, the family's scale and sampler."""
    kw = dict(dim=dim, num_tokens=tokens, depth=me.prior_depth, heads=max(1, dim // me.prior_dim_head),
              dim_head=me.prior_dim_head, timesteps=me.prior_timesteps, cond_drop_prob=me.prior_cond_drop)
    if family == "mindeye2":
        kw.update(embed_scale=1.0, sample_steps=20)
    if me.prior_embed_scale > 0:
        kw["embed_scale"] = float(me.prior_embed_scale)
    if me.prior_sample_steps > 0:
        kw["sample_steps"] = int(me.prior_sample_steps)
    kw["sample_steps"] = min(kw.get("sample_steps", me.prior_timesteps), me.prior_timesteps)
    return MindEyePriorConfig(**kw)


def build_network(me: DictConfig, family: str, num_voxels: list[int], tokens: int, dim: int,
                  subject_names: list[str] | None = None, blurry_out_channels: int = 4):
    if family == "mindeye1":
        return MindEye1Network(MindEye1Config(num_voxels[0], me.hidden, me.blocks, tokens, dim, me.projector_hidden,
                                              me.input_dropout, me.block_dropout))
    return MindEye2Network(MindEye2Config(
        num_voxels=list(num_voxels), hidden=me.hidden, n_blocks=me.blocks, seq_len=1, tokens=tokens, clip_dim=dim,
        dropout=me.block_dropout, blurry_recon=me.blurry, blurry_channels=me.blurry_channels,
        blurry_side=me.blurry_side, blurry_decoder_channels=list(me.blurry_decoder_channels),
        blurry_decoder_norm_groups=me.blurry_norm_groups, blurry_maps_hidden=me.blurry_maps_hidden,
        blurry_maps_dim=me.blurry_maps_dim, blurry_out_channels=blurry_out_channels, subjects=subject_names))


class _Part(torch.nn.Module):
    """A view of some of a network's submodules (for parameter groups)."""

    def __init__(self, modules: dict):
        super().__init__()
        for k, m in modules.items():
            self.add_module(k, m)


def optimizer_groups(family: str, network, prior, weight_decay: float) -> list[dict]:
    """The references' AdamW groups: MindEye1 [prior (decay, no decay), network (decay, no decay)]; MindEye2
    [adapters (all decayed), backbone (decay, no decay), prior (decay, no decay)]; no decay = names containing
    "bias" (``mindeye_param_groups``). Groups of parameters that do not train are left out."""
    if family == "mindeye1":
        parts = ([(prior.net, "split")] if prior is not None else []) + [(network, "split")]
    else:
        rest = _Part({k: m for k, m in network.named_children() if k != "adapters"})
        parts = [(network.adapters, "all"), (rest, "split")] + ([(prior.net, "split")] if prior is not None else [])
    groups = []
    for g in mindeye_param_groups(parts, weight_decay):
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append({"params": params, "weight_decay": g["weight_decay"]})
    return groups


def onecycle(optimizer, me: DictConfig, lr: float, epochs: int, steps: int):
    """OneCycleLR(max_lr=lr, total_steps=int(epochs * steps), final_div_factor, pct_start=warmup / epochs), the
    other arguments at torch's defaults (div_factor 25, cosine, beta1 cycled 0.95 -> 0.85 -> 0.95)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=int(epochs * steps),
                                               final_div_factor=me.final_div_factor, last_epoch=-1,
                                               pct_start=me.onecycle_warmup_epochs / epochs)


# ------------------------------------------------------------------------------------------------ model folders


def save_model_folder(folder: Path, family: str, network, prior=None, lowlevel=None, extra: dict | None = None) -> None:
    """The layout of mindvis.compat.mindeye's converted folders (see the module docstring)."""
    folder = Path(folder)
    comps = {k: m for k, m in (("network", network), ("prior", prior), ("lowlevel", lowlevel)) if m is not None}
    for name, module in comps.items():
        module.save_pretrained(folder / name)
    meta = {"family": family, "components": {k: type(m).__name__ for k, m in comps.items()},
            "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in comps.items()}, **(extra or {})}
    atomic_write_json(folder / "mindeye.json", meta)


def load_model_folder(folder: Path) -> dict:
    """{"family", "network", "prior" (or None), "lowlevel" (or None), "meta"} of a MindEye model folder."""
    from mindvis.compat.mindeye import load_converted
    from mindvis.data.fmri import DataError
    from mindvis.models.persistence import read_json

    folder = Path(folder)
    if not (folder / "mindeye.json").is_file():
        raise FileNotFoundError(f"{folder} is not a MindEye model folder (mindeye.json is missing)")
    meta = read_json(folder / "mindeye.json")
    comps = load_converted(folder)
    if "network" not in comps:
        raise DataError(f"{folder}: no network component (a MindEye1 low-level checkpoint alone cannot be scored)")
    return {"family": meta.get("family"), "network": comps["network"], "prior": comps.get("prior"),
            "lowlevel": comps.get("lowlevel"), "meta": meta}
