"""Read MindEye1 and MindEye2 checkpoints (``torch.save`` dicts of the reference code) into mindvis models.

Checkpoint layouts (see /work/notes/mindeye-nets.md for the full facts):

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
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.mindeye1 import MindEye1Config, MindEye1LowLevel, MindEye1LowLevelConfig, MindEye1Network
from ..models.mindeye2 import MindEye2Config, MindEye2Network
from ..models.mindeye_prior import MindEyePrior, MindEyePriorConfig, cosine_betas, mindeye2_prior_config
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


def _short(keys, n=6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _check_and_load(model: torch.nn.Module, mapped: dict, path: Path, part: str) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(mapped)
    if missing:
        raise CheckpointError(f"{path}: missing keys in model_state_dict for the {part} (mindvis names): "
                              f"{_short(missing)}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: {part} weight {k} has shape {tuple(v.shape)}, expected "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(mapped, strict=True)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _layers(sd: dict, pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return 1 + max(idx) if idx else 0


_PRIOR_RULES = [  # reference name (under net.) -> mindvis name (under net.)
    (r"learned_query", "pos_emb"),
    (r"null_brain_embeds", "null_brain_embeds"),
    (r"null_image_embed", "null_image_embeds"),
    (r"to_time_embeds\.0\.1\.net\.0\.0\.(weight|bias)", r"time_mlp.0.\1"),
    (r"to_time_embeds\.0\.1\.net\.1\.0\.(weight|bias)", r"time_mlp.2.\1"),
    (r"to_time_embeds\.0\.1\.net\.2\.(weight|bias)", r"time_mlp.4.\1"),
    (r"causal_transformer\.rel_pos_bias\.relative_attention_bias\.weight", "rel_pos_bias.weight"),
    (r"causal_transformer\.layers\.(\d+)\.0\.null_kv", r"blocks.\1.attn.null_kv"),
    (r"causal_transformer\.layers\.(\d+)\.0\.norm\.g", r"blocks.\1.attn.norm.weight"),
    (r"causal_transformer\.layers\.(\d+)\.0\.to_q\.weight", r"blocks.\1.attn.to_q.weight"),
    (r"causal_transformer\.layers\.(\d+)\.0\.to_kv\.weight", r"blocks.\1.attn.to_kv.weight"),
    (r"causal_transformer\.layers\.(\d+)\.0\.to_out\.0\.weight", r"blocks.\1.attn.to_out.weight"),
    (r"causal_transformer\.layers\.(\d+)\.0\.to_out\.1\.g", r"blocks.\1.attn.out_norm.weight"),
    (r"causal_transformer\.layers\.(\d+)\.1\.0\.g", r"blocks.\1.ff.norm.weight"),
    (r"causal_transformer\.layers\.(\d+)\.1\.1\.weight", r"blocks.\1.ff.proj_in.weight"),
    (r"causal_transformer\.layers\.(\d+)\.1\.5\.weight", r"blocks.\1.ff.proj_out.weight"),
    (r"causal_transformer\.norm\.g", "final_norm.weight"),
    (r"causal_transformer\.project_out\.weight", "proj_out.weight"),
]
_REL_POS = "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight"
_ROTARY = re.compile(r"causal_transformer\.layers\.\d+\.0\.rotary_emb\.freqs")
_SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
             "p2_loss_weight")

_TRUNK_RULES = [(r"lin0\.(\d)\.(weight|bias)", r"input.\1.\2"),
                (r"mlp\.(\d+)\.(\d)\.(weight|bias)", r"blocks.\1.\2.\3")]

# old diffusers (<= 0.13) VAE attention names -> current ones
_OLD_ATTENTION = [(r"\.attentions\.(\d+)\.query\.", r".attentions.\1.to_q."),
                  (r"\.attentions\.(\d+)\.key\.", r".attentions.\1.to_k."),
                  (r"\.attentions\.(\d+)\.value\.", r".attentions.\1.to_v."),
                  (r"\.attentions\.(\d+)\.proj_attn\.", r".attentions.\1.to_out.0.")]


def _map(sd: dict, prefix: str, rules, used: set) -> dict:
    """Keys under ``prefix`` renamed by ``rules`` (regex, replacement); each key read is added to ``used``."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        for pat, rep in rules:
            if re.fullmatch(pat, rest):
                out[re.sub(pat, rep, rest)] = v
                used.add(k)
                break
    return out


def _decoder_keys(sd: dict, prefix: str, new_prefix: str, used: set) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            rest = "." + k[len(prefix):]
            for pat, rep in _OLD_ATTENTION:
                rest = re.sub(pat, rep, rest)
            out[new_prefix + rest[1:]] = v
            used.add(k)
    return out


def _decoder_sizes(sd: dict, prefix: str) -> tuple[list[int], int, int]:
    """(block_out_channels in config order, layers_per_block, out_channels) of a diffusers VAE Decoder."""
    n_up = _layers(sd, re.escape(prefix) + r"up_blocks\.(\d+)\.")
    widths = [sd[f"{prefix}up_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(n_up)]
    resnets = _layers(sd, re.escape(prefix) + r"up_blocks\.0\.resnets\.(\d+)\.")
    return list(reversed(widths)), resnets - 1, sd[f"{prefix}conv_out.weight"].shape[0]


def _values_known(t: torch.Tensor) -> bool:
    return t.device.type != "meta"


def _prior_plan(sd: dict, prefix: str, family: str, path: Path, used: set) -> tuple[MindEyePriorConfig, dict]:
    need = f"{prefix}net.learned_query"
    if need not in sd:
        raise CheckpointError(f"{path}: no {need}: not a MindEye prior with learned position embeddings")
    dim = sd[need].shape[1]
    dim_head = sd[f"{prefix}net.causal_transformer.layers.0.0.null_kv"].shape[1]
    inner_ff = sd[f"{prefix}net.causal_transformer.layers.0.1.5.weight"].shape[1]
    betas_key = f"{prefix}noise_scheduler.betas"
    if betas_key not in sd:
        raise CheckpointError(f"{path}: no {betas_key}: the prior's noise schedule is missing")
    timesteps = sd[betas_key].shape[0]
    freqs = [k for k in sd if k.startswith(prefix + "net.") and _ROTARY.fullmatch(k[len(prefix) + 4:])]
    kw = dict(dim=dim, num_tokens=sd[need].shape[0],
              depth=_layers(sd, re.escape(prefix) + r"net\.causal_transformer\.layers\.(\d+)\."),
              heads=sd[f"{prefix}net.causal_transformer.layers.0.0.to_q.weight"].shape[0] // dim_head,
              dim_head=dim_head, ff_mult=inner_ff / dim,
              rotary_dim=2 * sd[freqs[0]].shape[0] if freqs else None,
              rel_pos_buckets=sd[f"{prefix}{_REL_POS}"].shape[0],
              time_mlp_expansion=sd[f"{prefix}net.to_time_embeds.0.1.net.0.0.weight"].shape[0] / dim,
              timesteps=timesteps)
    config = MindEyePriorConfig(**kw) if family == "mindeye1" else mindeye2_prior_config(**kw)
    if int(config.ff_mult * dim) != inner_ff:
        raise CheckpointError(f"{path}: feed-forward width {inner_ff} is not a multiple of the width {dim}")
    # the schedule must be the cosine schedule of `timesteps` steps, as the reference builds it
    if _values_known(sd[betas_key]) and not torch.allclose(sd[betas_key].float(), cosine_betas(timesteps).float(),
                                                           rtol=0, atol=1e-7):
        raise CheckpointError(f"{path}: {betas_key} is not the cosine schedule of {timesteps} steps")
    used.update(k for k in sd if k.startswith(prefix + "noise_scheduler.") and k[len(prefix) + 16:] in _SCHEDULE)
    rd = config.rotary_dim or min(32, dim_head)
    expect = 1.0 / (10000 ** (torch.arange(0, rd, 2)[: rd // 2].float() / rd))
    for k in freqs:  # rotary frequencies are derived, not learned: check them
        if _values_known(sd[k]) and not torch.allclose(sd[k].float(), expect):
            raise CheckpointError(f"{path}: {k} holds other rotary frequencies than theta 10000")
        used.add(k)
    mapped = {"net." + k: v for k, v in _map(sd, prefix + "net.", _PRIOR_RULES, used).items()}
    return config, mapped


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
                                n_blocks=_layers(sd, r"voxel2clip\.mlp\.(\d+)\."), tokens=w_out.shape[0] // clip_dim,
                                clip_dim=clip_dim, projector_hidden=sd[p + "projector.2.weight"].shape[0])
        if config.tokens * clip_dim != w_out.shape[0]:
            raise CheckpointError(f"{path}: output width {w_out.shape[0]} is not tokens x {clip_dim}")
        rules = [*_TRUNK_RULES,
                 (r"lin1\.(weight|bias)", r"output.\1"), (r"projector\.(\d)\.(weight|bias)", r"projector.\1.\2")]
        plan["network"] = (MindEye1Network, config, _map(sd, p, rules, used))
        prior_config, prior_sd = _prior_plan(sd, "", "mindeye1", path, used)
        plan["prior"] = (MindEyePrior, prior_config, prior_sd)
    elif "lin0.0.weight" in sd and any(k.startswith("upsampler.") for k in sd):
        w_in = sd["lin0.0.weight"]
        channels = sd["norm.weight"].shape[0]
        side = math.isqrt(sd["lin1.weight"].shape[0] // channels)
        widths, layers, out_ch = _decoder_sizes(sd, "upsampler.")
        cont = "maps_projector.0.weight" in sd
        config = MindEye1LowLevelConfig(
            num_voxels=w_in.shape[1], hidden=w_in.shape[0], n_blocks=_layers(sd, r"mlp\.(\d+)\."),
            latent_channels=channels, grid_side=side, decoder_channels=widths, decoder_layers_per_block=layers,
            out_channels=out_ch, use_cont=cont,
            maps_hidden=sd["maps_projector.0.weight"].shape[0] if cont else 512,
            maps_dim=sd["maps_projector.6.weight"].shape[0] if cont else 512)
        rules = [*_TRUNK_RULES,
                 (r"lin1\.weight", "to_grid.weight"), (r"norm\.(weight|bias)", r"grid_norm.\1"),
                 (r"maps_projector\.(\d)\.(weight|bias)", r"maps_projector.\1.\2")]
        mapped = _map(sd, "", rules, used)
        mapped.update(_decoder_keys(sd, "upsampler.", "decoder.", used))
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
    n_subj = _layers(sd, r"ridge\.linears\.(\d+)\.")
    voxels = [sd[f"ridge.linears.{i}.weight"].shape[1] for i in range(n_subj)]
    if subject is not None and not 0 <= subject < n_subj:
        raise CheckpointError(f"{path}: subject index {subject} out of range: the checkpoint has {n_subj} adapters")
    keep = list(range(n_subj)) if subject is None else [subject]
    b = "backbone."
    clip_dim = sd[b + "clip_proj.0.weight"].shape[0]
    blurry = b + "blin1.weight" in sd
    kw = dict(num_voxels=[voxels[i] for i in keep], hidden=sd["ridge.linears.0.weight"].shape[0],
              n_blocks=_layers(sd, r"backbone\.mixer_blocks1\.(\d+)\."),
              seq_len=sd[b + "mixer_blocks2.0.0.weight"].shape[0],
              tokens=sd[b + "backbone_linear.weight"].shape[0] // clip_dim, clip_dim=clip_dim,
              clip_proj_hidden=sd[b + "clip_proj.2.weight"].shape[0], blurry_recon=blurry)
    if blurry:
        ch = sd[b + "bnorm.weight"].shape[0]
        widths, layers, out_ch = _decoder_sizes(sd, b + "bupsampler.")
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
    mapped.update(_map(sd, b, rules, used))
    if blurry:
        mapped.update(_decoder_keys(sd, b + "bupsampler.", "blurry_decoder.", used))
    plan = {"network": (MindEye2Network, MindEye2Config(**kw), mapped)}
    if "diffusion_prior.net.learned_query" in sd:
        prior_config, prior_sd = _prior_plan(sd, "diffusion_prior.", "mindeye2", path, used)
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
        raise CheckpointError(f"{path}: unexpected keys in model_state_dict: {_short(extra)}")
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
