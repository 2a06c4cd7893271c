"""MindEye's forward passes and test-time decoding: a batch made of per-subject parts through the network, single
fMRI rows decoded, the two ways of averaging repetitions, the prior sampled, top-1 / top-5 retrieval.

Test time (:func:`decode_test`): MindEye1 decodes the fMRI averaged over the repetitions; MindEye2 decodes every
repetition and averages the model outputs (``mindeye.test_average``); the prior is sampled from the (averaged)
tokens with its family's sampler (100 ancestral DDPM steps / 20 strided DDIM steps).
"""
from __future__ import annotations

import numpy as np
import torch

from mindvis.evaluation.retrieval import cosine_similarity, top_k
from mindvis.models.mindeye_prior import MindEyePrior

from .mindeye_batches import _f32


def forward_batch(family: str, network, xs: list[torch.Tensor], subjects: list[int]) -> dict:
    """Outputs of a batch made of per-subject parts (MindEye1: one part): tokens, projected tokens and (MindEye2
    with the low-level branch) blurry latents and maps, rows in part order."""
    if family == "mindeye1":
        tokens = network.forward_backbone(xs[0])
        return {"regression": tokens, "contrastive": network.forward_projector(tokens)}
    h = torch.cat([network.forward_adapter(x, s) for x, s in zip(xs, subjects)])
    trunk = network.forward_trunk(h)
    tokens = network.forward_backbone(trunk)
    out = {"regression": tokens, "contrastive": network.forward_clip_proj(tokens)}
    if network.config.blurry_recon:
        out["blurry"], out["blurry_maps"] = network.forward_blurry(trunk)
    return out


# ------------------------------------------------------------------------------------------------ test time


@torch.no_grad()
def decode_outputs(family: str, network, fmri: np.ndarray, subject: int = 0, batch_size: int = 64) -> dict:
    """Network outputs of single fMRI rows: {"regression", "contrastive"[, "blurry"]} as float32 arrays."""
    network.eval()
    outs: dict[str, list] = {}
    dev = next(network.parameters()).device
    for i in range(0, len(fmri), batch_size):
        out = forward_batch(family, network, [_f32(fmri, slice(i, i + batch_size)).to(dev)], [subject])
        for k in ("regression", "contrastive", "blurry"):
            if k in out:
                outs.setdefault(k, []).append(out[k].float().cpu())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def average_outputs(family: str, network, trials: np.ndarray, groups: list[np.ndarray], subject: int = 0,
                    first: int | None = None) -> dict:
    """MindEye2's test-time averaging: every repetition (row of ``trials``) decoded and the outputs averaged per
    image (``groups[i]``: image i's rows, in repetition order; ``first``: only the first r of them)."""
    dec = decode_outputs(family, network, trials, subject)
    return {k: np.stack([v[g[:first]].mean(0) for g in groups]) for k, v in dec.items()}


def average_fmri(trials: np.ndarray, groups: list[np.ndarray], first: int | None = None) -> np.ndarray:
    return np.stack([trials[g[:first]].mean(0) for g in groups])


@torch.no_grad()
def sample_prior(prior: MindEyePrior, tokens: np.ndarray, seed: int, batch_size: int = 64) -> np.ndarray:
    """The prior's image tokens for brain tokens (N, T, D), with its default sampler, seeded."""
    prior.eval()
    dev = next(prior.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(tokens), batch_size):
        cond = torch.from_numpy(np.ascontiguousarray(tokens[i:i + batch_size], dtype=np.float32)).to(dev)
        draw = lambda shape: torch.randn(shape, generator=gen)
        out.append(prior.sample(cond, noise=draw).float().cpu())
    return torch.cat(out).numpy()


def retrieval_top(pred: np.ndarray, target: np.ndarray) -> dict:
    sim = cosine_similarity(torch.from_numpy(pred.reshape(len(pred), -1)),
                            torch.from_numpy(np.asarray(target, dtype=np.float32).reshape(len(target), -1)))
    return {"top1": top_k(sim, 1), "top5": top_k(sim, 5), "chance": 1 / len(pred)}
