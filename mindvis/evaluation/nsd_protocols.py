"""``mindvis-eval --suite nsd --protocol mindeye1|mindeye2``: what each paper scored, applied to ``samples.npz``.

* **mindeye1** (``Reconstructions.py`` then ``Reconstruction_Metrics.py``): per test image the best of N = 16
  img2img candidates by the similarity of its 257 CLIP ViT-L/14 tokens to the voxels' projector output
  (``best_of_n_scores``, computed by ``mindvis-sample``); no blend. Retrieval: the projector output (of the
  repetition-averaged fMRI) against the ground truths' tokens -- with MindEye2's draws: MindEye1's came from a
  resampled webdataset stream that was not seeded and cannot be replayed.
* **mindeye2** (``recon_inference`` / ``enhanced_recon_inference`` then ``final_evaluations.ipynb``): the first
  sample of each image, blended ``0.75 x`` reconstruction ``+ 0.25 x`` its blurry reconstruction (both at 256 px)
  before every image metric, as the notebook scores "enhanced" reconstructions. Retrieval: the retrieval
  submodule's output (averaged over the three repetitions) against the ground truths' bigG tokens.

Every way the samples' making departs from the published procedure (from their metadata) is listed in the report as
a deviation; nothing is silently changed.
"""
from __future__ import annotations

import numpy as np
import torch

PUBLISHED = {
    "mindeye1": {"family": "mindeye1", "num_samples": 16, "steps": 20, "guidance": 3.5, "strength": 0.85, "seed": 42,
                 "prior_steps": 100, "generator": "versatile-diffusion", "target_space": "clip-vit-l-14-tokens",
                 "procedure": ["best of N candidates by cosine similarity of their CLIP ViT-L/14 tokens (Clipper) to the "
                               "projector output of the voxels (nanargmax)", "no blend with the blurry image",
                               "retrieval: projector output of the repetition-averaged fMRI vs the ground truths' "
                               "257 x 768 tokens"]},
    "mindeye2": {"family": "mindeye2", "num_samples": 1, "steps": 38, "guidance": 5.0, "offset_noise": 0.04,
                 "seed": 42, "prior_steps": 20, "generator": "unclip", "target_space": "openclip-bigg-14-tokens",
                 "procedure": ["the first sample of each image (no selection)",
                               "each reconstruction x 0.75 + its blurry reconstruction x 0.25, both at 256 px "
                               "(final_evaluations: 'enhanced' reconstructions)",
                               "retrieval: the retrieval submodule's output averaged over 3 repetitions vs the ground "
                               "truths' 256 x 1664 bigG tokens"]},
}
NSD_PROTOCOLS = tuple(PUBLISHED)
COMMON = ["ground truths: the prepared NSD test images; the published 256 px ground-truth files were made by the "
          "authors in a way their public code does not show",
          "samples scored from samples.npz as uint8 (the published code scored float tensors): up to 1/510 per pixel",
          "networks in float32 on this machine; the published runs used fp16 autocast on GPUs, and their random "
          "streams (CUDA generators, the global RNG) are not reproduced draw for draw",
          "retrieval in float64 with ties counted against (the published fp16 similarities resolve near-ties by "
          "argsort order)"]


def load_extras(path) -> dict:
    """The arrays beyond samples and ground truth that the protocols read (those present)."""
    from ..data.fmri import read_npz

    return read_npz(path, [], optional=["blurry", "best_of_n_scores", "embeddings_pred", "embeddings_target",
                                        "captions"])


def _floats(a: np.ndarray) -> torch.Tensor:
    from .evaluate import to_float_images

    return to_float_images(a)


def deviations(name: str, meta: dict) -> list[str]:
    """How the samples' making (their metadata) departs from ``name``'s published procedure."""
    spec, out = PUBLISHED[name], []
    if meta.get("family") != spec["family"]:
        out.append(f"samples of a {meta.get('family') or 'non-MindEye'} model scored under the {name} protocol")
    if meta.get("stand_in"):
        out.append(f"generator: the synthetic world's embedding-conditioned generator ({meta.get('generator_folder')}) "
                   f"stands in for {spec['generator']} (conditioned on the first token only; its learned null token as "
                   "the unconditional input)")
    elif meta.get("generator") not in (None, spec["generator"]):
        out.append(f"generator {meta.get('generator')!r} (published: {spec['generator']})")
    for key in ("num_samples", "steps", "guidance", "strength", "offset_noise", "seed", "prior_steps"):
        if key in spec and meta.get(key) != spec[key]:
            out.append(f"sampling {key}={meta.get(key)!r} (published: {spec[key]!r})")
    space = meta.get("target_space") or ""
    if not space.startswith(spec["target_space"]):
        out.append(f"token space {space or 'none'!r} (published: {spec['target_space']})")
    low = meta.get("lowlevel")
    if not low:
        out.append("no low-level path: no blurry images" + (" (no img2img)" if name == "mindeye1" else ""))
    elif low.get("decoder") == "pixels":
        out.append("the low-level path regresses the image's pixels (the synthetic world has no VAE) instead of "
                   "Stable Diffusion VAE latents")
    if name == "mindeye1" and meta.get("blurry_resized"):
        out.append(f"img2img init: the blurry image resized {meta['blurry_resized']} (the published sizes agree)")
    if name == "mindeye1" and low and "off" in str(low.get("contrastive", "")):
        out.append("low-level model trained without its ConvNeXt-XL contrastive term (teacher not available)")
    if name == "mindeye2" and meta.get("refined") and meta.get("refine_size") not in (None, 768):
        out.append(f"refined at {meta['refine_size']} px (published: 768)")
    if name == "mindeye2" and not meta.get("refined"):
        out.append("no SDXL refinement: the unrefined reconstructions take the enhanced ones' place in the blend")
    if name == "mindeye1":
        out.append("retrieval draws: MindEye2's (np.random 42, 30 x 300); MindEye1's webdataset draws cannot be "
                   "replayed")
    return out + COMMON


def prepare(name: str, path, samples: torch.Tensor, meta: dict):
    """(samples (N, 1, 3, H, W) as the protocol scores them, blurry (N, 3, h, w) or None, embeddings or None,
    the report's ``protocol`` section). Raises ValueError when the samples lack what the protocol needs."""
    extras = load_extras(path)
    applied = list(PUBLISHED[name]["procedure"])
    blurry = None
    if name == "mindeye1":
        if "best_of_n_scores" not in extras:
            raise ValueError(f"{path} has no best_of_n_scores: --protocol mindeye1 selects the best of the candidates "
                             "by CLIP similarity, which mindvis-sample computes for MindEye1 models (with the token "
                             "embedder: --target)")
        scores = torch.from_numpy(extras["best_of_n_scores"]).double()
        if scores.shape != samples.shape[:2]:
            raise ValueError(f"best_of_n_scores {tuple(scores.shape)} does not match the samples "
                             f"{tuple(samples.shape[:2])}")
        best = torch.from_numpy(np.nanargmax(scores.numpy(), axis=1))
        samples = samples[torch.arange(len(samples)), best][:, None]
        applied[0] += f" (N = {scores.shape[1]})"
    else:
        if "blurry" not in extras:
            raise ValueError(f"{path} has no blurry reconstructions: --protocol mindeye2 blends each reconstruction "
                             "with its blurry one (a model with the low-level branch, and --blurry-vae)")
        blurry = _floats(extras["blurry"])
        if len(blurry) != len(samples):
            raise ValueError(f"{len(blurry)} blurry images for {len(samples)} samples")
        samples = samples[:, :1]
    embeddings = None
    if "embeddings_pred" in extras and "embeddings_target" in extras:
        embeddings = {"pred": extras["embeddings_pred"], "target": extras["embeddings_target"]}
    protocol = {"name": name, "applied": applied, "deviations": deviations(name, meta)}
    if embeddings is None:
        protocol["deviations"].insert(0, "no retrieval: samples.npz holds no decoded and target embeddings (the "
                                         "target space's embedder was not available to mindvis-sample)")
    return samples, blurry, embeddings, protocol


def protocol_markdown(protocol: dict) -> str:
    lines = ["", f"## Protocol {protocol['name']}", "", "Applied as published:"]
    lines += [f"- {a}" for a in protocol["applied"]]
    lines += ["", f"Deviations from the published procedure ({len(protocol['deviations'])}):"]
    lines += [f"- {d}" for d in protocol["deviations"]]
    return "\n".join(lines) + "\n"
