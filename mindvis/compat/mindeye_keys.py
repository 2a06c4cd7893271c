"""How MindEye checkpoint keys become mindvis names: regex renaming rules, the sizes read from tensor shapes, the
old (diffusers <= 0.13) VAE decoder names, and the diffusion prior's configuration and weights
(:func:`prior_plan`). Used by :mod:`mindvis.compat.mindeye`, which reads the files and builds the models."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..models.mindeye_prior import MindEyePriorConfig, cosine_betas, mindeye2_prior_config
from .safe_pickle import CheckpointError


def short_keys(keys, n=6) -> str:
    """The first ``n`` keys, sorted, and how many more: for one-line errors."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def count_layers(sd: dict, pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` among the keys (0 if none match)."""
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return 1 + max(idx) if idx else 0


PRIOR_RULES = [  # reference name (under net.) -> mindvis name (under net.)
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
REL_POS = "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight"
ROTARY = re.compile(r"causal_transformer\.layers\.\d+\.0\.rotary_emb\.freqs")
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
             "p2_loss_weight")

TRUNK_RULES = [(r"lin0\.(\d)\.(weight|bias)", r"input.\1.\2"),
                (r"mlp\.(\d+)\.(\d)\.(weight|bias)", r"blocks.\1.\2.\3")]

# old diffusers (<= 0.13) VAE attention names -> current ones
OLD_ATTENTION = [(r"\.attentions\.(\d+)\.query\.", r".attentions.\1.to_q."),
                  (r"\.attentions\.(\d+)\.key\.", r".attentions.\1.to_k."),
                  (r"\.attentions\.(\d+)\.value\.", r".attentions.\1.to_v."),
                  (r"\.attentions\.(\d+)\.proj_attn\.", r".attentions.\1.to_out.0.")]


def map_keys(sd: dict, prefix: str, rules, used: set) -> dict:
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


def decoder_keys(sd: dict, prefix: str, new_prefix: str, used: set) -> dict:
    """A diffusers VAE decoder's keys under ``prefix`` moved to ``new_prefix``, old attention names renamed."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            rest = "." + k[len(prefix):]
            for pat, rep in OLD_ATTENTION:
                rest = re.sub(pat, rep, rest)
            out[new_prefix + rest[1:]] = v
            used.add(k)
    return out


def decoder_sizes(sd: dict, prefix: str) -> tuple[list[int], int, int]:
    """(block_out_channels in config order, layers_per_block, out_channels) of a diffusers VAE Decoder."""
    n_up = count_layers(sd, re.escape(prefix) + r"up_blocks\.(\d+)\.")
    widths = [sd[f"{prefix}up_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(n_up)]
    resnets = count_layers(sd, re.escape(prefix) + r"up_blocks\.0\.resnets\.(\d+)\.")
    return list(reversed(widths)), resnets - 1, sd[f"{prefix}conv_out.weight"].shape[0]


def values_known(t: torch.Tensor) -> bool:
    """False for meta tensors (shape-only checks of the released layouts)."""
    return t.device.type != "meta"


def prior_plan(sd: dict, prefix: str, family: str, path: Path, used: set) -> tuple[MindEyePriorConfig, dict]:
    """The prior's config (every size from the tensors) and its weights under mindvis names; the stored noise
    schedule and rotary frequencies are checked against what the reference derives."""
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
    freqs = [k for k in sd if k.startswith(prefix + "net.") and ROTARY.fullmatch(k[len(prefix) + 4:])]
    kw = dict(dim=dim, num_tokens=sd[need].shape[0],
              depth=count_layers(sd, re.escape(prefix) + r"net\.causal_transformer\.layers\.(\d+)\."),
              heads=sd[f"{prefix}net.causal_transformer.layers.0.0.to_q.weight"].shape[0] // dim_head,
              dim_head=dim_head, ff_mult=inner_ff / dim,
              rotary_dim=2 * sd[freqs[0]].shape[0] if freqs else None,
              rel_pos_buckets=sd[f"{prefix}{REL_POS}"].shape[0],
              time_mlp_expansion=sd[f"{prefix}net.to_time_embeds.0.1.net.0.0.weight"].shape[0] / dim,
              timesteps=timesteps)
    config = MindEyePriorConfig(**kw) if family == "mindeye1" else mindeye2_prior_config(**kw)
    if int(config.ff_mult * dim) != inner_ff:
        raise CheckpointError(f"{path}: feed-forward width {inner_ff} is not a multiple of the width {dim}")
    # the schedule must be the cosine schedule of `timesteps` steps, as the reference builds it
    if values_known(sd[betas_key]) and not torch.allclose(sd[betas_key].float(), cosine_betas(timesteps).float(),
                                                           rtol=0, atol=1e-7):
        raise CheckpointError(f"{path}: {betas_key} is not the cosine schedule of {timesteps} steps")
    used.update(k for k in sd if k.startswith(prefix + "noise_scheduler.") and k[len(prefix) + 16:] in SCHEDULE_BUFFERS)
    rd = config.rotary_dim or min(32, dim_head)
    expect = 1.0 / (10000 ** (torch.arange(0, rd, 2)[: rd // 2].float() / rd))
    for k in freqs:  # rotary frequencies are derived, not learned: check them
        if values_known(sd[k]) and not torch.allclose(sd[k].float(), expect):
            raise CheckpointError(f"{path}: {k} holds other rotary frequencies than theta 10000")
        used.add(k)
    mapped = {"net." + k: v for k, v in map_keys(sd, prefix + "net.", PRIOR_RULES, used).items()}
    return config, mapped
