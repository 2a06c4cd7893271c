"""Read MindEye1 and MindEye2 checkpoints (``torch.save`` dicts of the reference code) into mindvis models.

Checkpoint layouts:

* MindEye1 ``prior_257_*/last.pth`` (Train_MindEye): ``epoch``, ``model_state_dict`` (a ``BrainDiffusionPrior``:
  ``voxel2clip.*`` = the voxel -> token network, ``net.*`` = the prior's denoiser, ``noise_scheduler.*`` = its
  schedule buffers), ``optimizer_state_dict``, ``lr_scheduler`` (a OneCycleLR state dict whose ``anneal_func`` is a
  bound method: torch 2.0 pickles the scheduler object, its AdamW and the parameters with it), ``train_losses``,
  ``val_losses``, ``lrs``.
* MindEye1 ``autoencoder_*/epochNNN.pth`` (train_autoencoder.py): ``epoch``, ``model_state_dict`` (a
  ``Voxel2StableDiffusionModel``: ``lin0``, ``mlp``, ``lin1``, ``norm``, ``upsampler`` (diffusers 0.13 ``Decoder``,
  old attention key names), ``maps_projector``), ``optimizer_state_dict``, ``train_losses``, ``val_losses``, ``lrs``.
* MindEye2 ``*/last.pth`` (Train.ipynb): ``epoch``, ``model_state_dict`` (``ridge.linears.N.*`` per subject,
  ``backbone.*`` = ``BrainNetwork``, ``diffusion_prior.net.*`` / ``diffusion_prior.noise_scheduler.*``),
  ``optimizer_state_dict``, ``lr_scheduler``, ``train_losses``, ``test_losses``, ``lrs``.

Files are read without running pickled code by :func:`mindvis.compat.safe_pickle.load_torch_checkpoint`
(MindEye1's pickles hold a POP opcode, which PyTorch's restricted unpickler lacks: safe_pickle reads those with its
own restricted unpickler under the same admission rules).

Every size is read from the tensors' shapes: voxel counts (per subject), hidden width, number of blocks, tokens
and their width, projector widths, the prior's depth, heads (query width / ``null_kv`` width), head width, feed-
forward width, rotary width (``rotary_emb.freqs``) and number of steps (``noise_scheduler.betas``), the low-level
grid, decoder widths and layers. Not stored in the tensors, and taken from the reference's code: the attention
temperature (16), the relative-position maximum distance (128), non-causal attention, the decoders' GroupNorm
groups (32), dropout rates, and each family's target scaling and default sampler (MindEye1: targets x sqrt(D),
100 ancestral steps; MindEye2: unscaled, 20 strided DDIM steps). The noise schedule buffers must be the cosine
schedule of that many steps.

Key mapping is strict: keys of ``model_state_dict`` that nothing reads, or weights a model needs that the file
lacks, are named in one line (:class:`~mindvis.compat.safe_pickle.CheckpointError`).

:func:`convert_mindeye1` / :func:`convert_mindeye2` write a folder::

    OUT/mindeye.json   {"family", "source", "epoch", "components": {name: class}, "parameters": {name: count},
                        "subjects": [...] (MindEye2)}
    OUT/network/       MindEye1Network or MindEye2Network   (save_pretrained: config.json + model.safetensors)
    OUT/prior/         MindEyePrior
    OUT/lowlevel/      MindEye1LowLevel (a MindEye1 autoencoder checkpoint)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.mindeye1 import MindEye1Config, MindEye1LowLevel, MindEye1LowLevelConfig, MindEye1Network
from ..models.mindeye2 import MindEye2Config, MindEye2Network
from ..models.mindeye_prior import MindEyePrior
from .mindeye_keys import TRUNK_RULES, count_layers, decoder_keys, decoder_sizes, map_keys, prior_plan, short_keys
from .safe_pickle import CheckpointError, load_torch_checkpoint

WHAT = "MindEye checkpoint"


# --------------------------------------------------------------------------------------------- reading the file


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict of a MindEye ``.pth`` file, with no pickled code run (see the module docstring)."""
    ckpt = load_torch_checkpoint(path, what=WHAT)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_state_dict"), dict):
        raise CheckpointError(f"{path}: not a {WHAT}: no model_state_dict")
    return ckpt


# --------------------------------------------------------------------------------------------- key mapping


def _check_and_load(model: torch.nn.Module, mapped: dict, path: Path, part: str) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(mapped)
    if missing:
        raise CheckpointError(f"{path}: missing keys in model_state_dict for the {part} (mindvis names): "
                              f"{short_keys(missing)}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: {part} weight {k} has shape {tuple(v.shape)}, expected "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(mapped, strict=True)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _missing_key_is_an_error(fn):
    def wrapped(sd, path, *args):
        try:
            return fn(sd, path, *args)
        except KeyError as e:
            raise CheckpointError(f"{path}: missing key in model_state_dict: {e.args[0]}") from None
    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_missing_key_is_an_error
def plan_mindeye1(sd: dict, path: Path) -> tuple[dict, set]:
    """{component: (class, config, mapped state dict)} of a MindEye1 ``model_state_dict``, and the keys read."""
    used: set = set()
    plan = {}
    if "voxel2clip.lin0.0.weight" in sd:
        p = "voxel2clip."
        w_in, w_out = sd[p + "lin0.0.weight"], sd[p + "lin1.weight"]
        if p + "projector.0.weight" not in sd:
            raise CheckpointError(f"{path}: voxel2clip has no projector (use_projector=False is not supported)")
        clip_dim = sd[p + "projector.0.weight"].shape[0]
        config = MindEye1Config(num_voxels=w_in.shape[1], hidden=w_in.shape[0],
                                n_blocks=count_layers(sd, r"voxel2clip\.mlp\.(\d+)\."), tokens=w_out.shape[0] // clip_dim,
                                clip_dim=clip_dim, projector_hidden=sd[p + "projector.2.weight"].shape[0])
        if config.tokens * clip_dim != w_out.shape[0]:
            raise CheckpointError(f"{path}: output width {w_out.shape[0]} is not tokens x {clip_dim}")
        rules = [*TRUNK_RULES,
                 (r"lin1\.(weight|bias)", r"output.\1"), (r"projector\.(\d)\.(weight|bias)", r"projector.\1.\2")]
        plan["network"] = (MindEye1Network, config, map_keys(sd, p, rules, used))
        prior_config, prior_sd = prior_plan(sd, "", "mindeye1", path, used)
        plan["prior"] = (MindEyePrior, prior_config, prior_sd)
    elif "lin0.0.weight" in sd and any(k.startswith("upsampler.") for k in sd):
        w_in = sd["lin0.0.weight"]
        channels = sd["norm.weight"].shape[0]
        side = math.isqrt(sd["lin1.weight"].shape[0] // channels)
        widths, layers, out_ch = decoder_sizes(sd, "upsampler.")
        cont = "maps_projector.0.weight" in sd
        config = MindEye1LowLevelConfig(
            num_voxels=w_in.shape[1], hidden=w_in.shape[0], n_blocks=count_layers(sd, r"mlp\.(\d+)\."),
            latent_channels=channels, grid_side=side, decoder_channels=widths, decoder_layers_per_block=layers,
            out_channels=out_ch, use_cont=cont,
            maps_hidden=sd["maps_projector.0.weight"].shape[0] if cont else 512,
            maps_dim=sd["maps_projector.6.weight"].shape[0] if cont else 512)
        rules = [*TRUNK_RULES,
                 (r"lin1\.weight", "to_grid.weight"), (r"norm\.(weight|bias)", r"grid_norm.\1"),
                 (r"maps_projector\.(\d)\.(weight|bias)", r"maps_projector.\1.\2")]
        mapped = map_keys(sd, "", rules, used)
        mapped.update(decoder_keys(sd, "upsampler.", "decoder.", used))
        plan["lowlevel"] = (MindEye1LowLevel, config, mapped)
    else:
        raise CheckpointError(f"{path}: neither a MindEye1 prior checkpoint (voxel2clip.*, net.*) nor a low-level "
                              "one (lin0.*, upsampler.*)")
    return plan, used


@_missing_key_is_an_error
def plan_mindeye2(sd: dict, path: Path, subject: int | None = None) -> tuple[dict, set, list[int]]:
    """{component: (class, config, mapped state dict)} of a MindEye2 ``model_state_dict``, the keys read, and the
    checkpoint adapter indices kept."""
    if "ridge.linears.0.weight" not in sd or "backbone.backbone_linear.weight" not in sd:
        raise CheckpointError(f"{path}: not a MindEye2 checkpoint (no ridge.linears.0.weight / backbone.*)")
    used: set = set()
    n_subj = count_layers(sd, r"ridge\.linears\.(\d+)\.")
    voxels = [sd[f"ridge.linears.{i}.weight"].shape[1] for i in range(n_subj)]
    if subject is not None and not 0 <= subject < n_subj:
        raise CheckpointError(f"{path}: subject index {subject} out of range: the checkpoint has {n_subj} adapters")
    keep = list(range(n_subj)) if subject is None else [subject]
    b = "backbone."
    clip_dim = sd[b + "clip_proj.0.weight"].shape[0]
    blurry = b + "blin1.weight" in sd
    kw = dict(num_voxels=[voxels[i] for i in keep], hidden=sd["ridge.linears.0.weight"].shape[0],
              n_blocks=count_layers(sd, r"backbone\.mixer_blocks1\.(\d+)\."),
              seq_len=sd[b + "mixer_blocks2.0.0.weight"].shape[0],
              tokens=sd[b + "backbone_linear.weight"].shape[0] // clip_dim, clip_dim=clip_dim,
              clip_proj_hidden=sd[b + "clip_proj.2.weight"].shape[0], blurry_recon=blurry)
    if blurry:
        ch = sd[b + "bnorm.weight"].shape[0]
        widths, layers, out_ch = decoder_sizes(sd, b + "bupsampler.")
        kw.update(blurry_channels=ch, blurry_side=math.isqrt(sd[b + "blin1.weight"].shape[0] // ch),
                  blurry_decoder_channels=widths, blurry_decoder_layers_per_block=layers, blurry_out_channels=out_ch,
                  blurry_maps_hidden=sd[b + "b_maps_projector.0.weight"].shape[0],
                  blurry_maps_dim=sd[b + "b_maps_projector.6.weight"].shape[0])
    mapped = {}
    for new, old in enumerate(keep):
        for name in ("weight", "bias"):
            mapped[f"adapters.{new}.{name}"] = sd[f"ridge.linears.{old}.{name}"]
    used.update(k for k in sd if k.startswith("ridge.linears."))  # adapters left out on purpose count as read
    rules = [(r"mixer_blocks1\.(\d+)\.0\.(weight|bias)", r"feature_mixers.\1.0.\2"),
             (r"mixer_blocks1\.(\d+)\.1\.0\.(weight|bias)", r"feature_mixers.\1.1.\2"),
             (r"mixer_blocks1\.(\d+)\.1\.3\.(weight|bias)", r"feature_mixers.\1.4.\2"),
             (r"mixer_blocks2\.(\d+)\.0\.(weight|bias)", r"sequence_mixers.\1.0.\2"),
             (r"mixer_blocks2\.(\d+)\.1\.0\.(weight|bias)", r"sequence_mixers.\1.1.\2"),
             (r"mixer_blocks2\.(\d+)\.1\.3\.(weight|bias)", r"sequence_mixers.\1.4.\2"),
             (r"backbone_linear\.(weight|bias)", r"backbone_linear.\1"),
             (r"clip_proj\.(\d)\.(weight|bias)", r"clip_proj.\1.\2"),
             (r"blin1\.(weight|bias)", r"blurry_linear.\1"), (r"bnorm\.(weight|bias)", r"blurry_norm.\1"),
             (r"b_maps_projector\.(\d)\.(weight|bias)", r"blurry_maps.\1.\2")]
    mapped.update(map_keys(sd, b, rules, used))
    if blurry:
        mapped.update(decoder_keys(sd, b + "bupsampler.", "blurry_decoder.", used))
    plan = {"network": (MindEye2Network, MindEye2Config(**kw), mapped)}
    if "diffusion_prior.net.learned_query" in sd:
        prior_config, prior_sd = prior_plan(sd, "diffusion_prior.", "mindeye2", path, used)
        plan["prior"] = (MindEyePrior, prior_config, prior_sd)
    return plan, used, keep


# --------------------------------------------------------------------------------------------- the loaders


@dataclass
class MindEyeCheckpoint:
    """What a MindEye checkpoint holds, as mindvis models."""

    family: str  # mindeye1 | mindeye2
    path: Path
    epoch: int | None
    network: torch.nn.Module | None = None  # MindEye1Network / MindEye2Network
    prior: MindEyePrior | None = None
    lowlevel: MindEye1LowLevel | None = None
    subjects: list[int] = field(default_factory=list)  # MindEye2: the checkpoint's adapter indices kept

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {k: m for k, m in (("network", self.network), ("prior", self.prior), ("lowlevel", self.lowlevel))
                if m is not None}

    @property
    def parameter_counts(self) -> dict[str, int]:
        return {k: _count(m) for k, m in self.components.items()}

    def summary(self) -> str:
        counts = self.parameter_counts
        parts = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        total = sum(counts.values())
        return f"{self.path.name}: {self.family}, epoch {self.epoch}, parameters: {parts} (total {total:,})"


def _build(plan: dict, sd: dict, used: set, path: Path, out: MindEyeCheckpoint) -> MindEyeCheckpoint:
    extra = set(sd) - used
    if extra:
        raise CheckpointError(f"{path}: unexpected keys in model_state_dict: {short_keys(extra)}")
    for name, (cls, config, mapped) in plan.items():
        model = cls(config)
        _check_and_load(model, mapped, path, name)
        setattr(out, name, model.eval())
    return out


def _open(ckpt, path) -> tuple[dict, Path]:
    if isinstance(ckpt, dict):
        return ckpt, Path(path or "checkpoint")
    return read_checkpoint(ckpt), Path(path or ckpt)


def load_mindeye1(ckpt: str | os.PathLike | dict, path: str | os.PathLike | None = None) -> MindEyeCheckpoint:
    """A MindEye1 checkpoint: a ``prior_*`` file (voxel2clip + prior) or an ``autoencoder_*`` file (low level)."""
    ck, path = _open(ckpt, path)
    sd = ck["model_state_dict"]
    plan, used = plan_mindeye1(sd, path)
    return _build(plan, sd, used, path, MindEyeCheckpoint("mindeye1", path, ck.get("epoch")))


def load_mindeye2(ckpt: str | os.PathLike | dict, subject: int | None = None,
                  path: str | os.PathLike | None = None) -> MindEyeCheckpoint:
    """A MindEye2 checkpoint (multi-subject or fine-tuned). ``subject``: keep only that adapter (its index in the
    checkpoint's ``ridge.linears``); None keeps them all."""
    ck, path = _open(ckpt, path)
    sd = ck["model_state_dict"]
    plan, used, keep = plan_mindeye2(sd, path, subject)
    return _build(plan, sd, used, path, MindEyeCheckpoint("mindeye2", path, ck.get("epoch"), subjects=keep))


# --------------------------------------------------------------------------------------------- converters


def _write(result: MindEyeCheckpoint, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    from ..utils.io import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in result.components.items():
        module.save_pretrained(out / name)
    atomic_write_json(out / "mindeye.json", {
        "family": result.family, "source": str(result.path), "epoch": result.epoch,
        "components": {k: type(m).__name__ for k, m in result.components.items()},
        "parameters": result.parameter_counts, **(extra or {})})
    return out


def convert_mindeye1(ckpt: str | os.PathLike, out_dir: str | os.PathLike) -> MindEyeCheckpoint:
    """Load a MindEye1 checkpoint and write its components with ``save_pretrained`` (layout: module docstring)."""
    result = load_mindeye1(ckpt)
    _write(result, out_dir)
    return result


def convert_mindeye2(ckpt: str | os.PathLike, out_dir: str | os.PathLike,
                     subject: int | None = None) -> MindEyeCheckpoint:
    result = load_mindeye2(ckpt, subject=subject)
    _write(result, out_dir, {"subjects": result.subjects})
    return result


def load_converted(folder: str | os.PathLike) -> dict[str, torch.nn.Module]:
    """The components of a folder written by :func:`convert_mindeye1` / :func:`convert_mindeye2`."""
    folder = Path(folder)
    meta = json.loads((folder / "mindeye.json").read_text())
    classes = {"MindEye1Network": MindEye1Network, "MindEye2Network": MindEye2Network, "MindEyePrior": MindEyePrior,
               "MindEye1LowLevel": MindEye1LowLevel}
    return {name: classes[cls].from_pretrained(folder / name) for name, cls in meta["components"].items()}


__all__ = ["MindEyeCheckpoint", "convert_mindeye1", "convert_mindeye2", "load_converted", "load_mindeye1",
           "load_mindeye2", "read_checkpoint"]
