"""Fixture generator: MindEye1's image stage (``utils.reconstruction`` as ``Reconstructions.py`` calls it).

Run in MindEye1's venv (torch 2.0.1, diffusers 0.13.0, transformers 4.29.2; README.md beside this file)::

    OMP_NUM_THREADS=1 /work/refenv/mindeye1/bin/python tools/reference_fixtures/mindeye1_recon.py \\
        --reference /work/.mirror/MedARC-AI+fMRI-reconstruction-NSD/repo

It reads the reference's ``src/`` at run time (``models.py`` with mindeye1.py's width substitution, ``utils.py``),
builds the voxel2clip + diffusion prior of ``tests/fixtures/mindeye1/prior/last.pth`` (the other MindEye1
generator's checkpoint) as ``Reconstructions.py`` builds and loads them (``strict=False``), a tiny Versatile-
Diffusion-like image UNet and VAE in diffusers 0.13 (saved here, as ``image_unet/``, ``vae/``, ``scheduler/``),
``UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")`` from Stable Diffusion 1.x's PNDM config
(the one Versatile Diffusion ships), and the reference's ``Clipper`` built as ``mindeye_targets.py`` builds it (the
tiny CLIP of ``tests/fixtures/mindeye_targets/clip_tiny``; ``clip.load`` stubbed). It then runs
``utils.reconstruction`` with img2img from a blurry image decoded as ``Reconstructions.py`` decodes the low-level
latents (strength 0.85, 3 candidates, guidance 3.5, 20 steps, seed 42), and once without img2img.

Changes to the reference's code, each listed in ``shapes.json``:

* ``utils.reconstruction`` reads the backbone tokens with a literal 768 (``view(len(voxel), -1, 768)``), makes
  its (all-zero) text-prompt part ``zeros(n, 77, 768)`` and draws its latents as ``randn([recons_per_sample, 4,
  64, 64])``: the fixture's width (16) and latent side (16) are substituted;
* ``Clipper.embed_image`` (CLIP ViT-L/14's 257 tokens) is replaced, on the instance, by a seeded 4-token embedder
  (a 4 x 4 stride-4 convolution pooled to 2 x 2; its weights are saved): no CLIP ViT has the fixture prior's
  4 tokens, and the best-of-N comparison needs candidates' tokens of the projector's shape;
* ``VersatileDiffusionPriorNetwork`` gets ``num_tokens`` = 4 (``Reconstructions.py`` leaves the default 257);
* Reconstructions.py's dual-guidance loop sets the image condition's length to 4 instead of 257.

The UNet the reference runs is the dual-guided one: the tiny image UNet's transformer blocks paired with those of a
second, differently seeded UNet (in place of Versatile Diffusion's text UNet) by diffusers' own
``VersatileDiffusionDualGuidedPipeline._convert_to_dual_attention``, with ``Reconstructions.py``'s settings (text /
image mix ratio 0) executed on it; what is saved (and what mindvis runs) is the image UNet alone.

Writes ``tests/fixtures/mindeye1_recon/``: ``vd_tiny/`` (diffusers 0.13 folders), ``reference_outputs.npz`` and
``shapes.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import extract_reference, stub_module  # noqa: E402
from mindeye1 import SIZES, load_module, patched_models_source  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
#: Stable Diffusion 1.x's scheduler config, which Versatile Diffusion's snapshot ships as scheduler/ (PNDM)
VD_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                "steps_offset": 1, "trained_betas": None, "clip_sample": False}
LATENT = 16


def token_embedder(seed: int = 3):
    """The seeded 4 x 16 token embedder standing in for Clipper.embed_image (weights returned for the fixture)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 3, 4, 4, generator=g) / 7.0
    b = torch.randn(16, generator=g) * 0.1

    def embed(image):
        x = torch.nn.functional.conv2d(image.float(), w, b, stride=4)
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)

    return embed, w, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "mindeye1_recon"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    S = SIZES
    V, H, T, D = S["num_voxels"], S["hidden"], S["tokens"], S["clip_dim"]

    src, commit = extract_reference(args.reference)
    sys.path.insert(0, str(src))
    stub_module("clip_retrieval.clip_client", ClipClient=None)
    (src / "models.py").write_text(patched_models_source((src / "models.py").read_text()))
    clip_stub = types.ModuleType("clip")
    clip_stub.load = lambda variant, device=None: (torch.nn.Identity(), None)
    sys.modules["clip"] = clip_stub
    import transformers
    from transformers import CLIPVisionModelWithProjection

    tiny_clip = CLIPVisionModelWithProjection.from_pretrained(REPO / "tests" / "fixtures" / "mindeye_targets" /
                                                              "clip_tiny").eval()
    transformers.CLIPVisionModelWithProjection.from_pretrained = lambda *a, **k: tiny_clip
    models = load_module("models", src / "models.py")
    utils = load_module("utils", src / "utils.py")
    utils.device = torch.device("cpu")

    # voxel2clip + prior as Reconstructions.py builds and loads them
    from common import shrink_sequential

    voxel2clip = models.BrainNetwork(in_dim=V, out_dim=T * D, clip_size=D, h=H, n_blocks=S["n_blocks"])
    voxel2clip.projector = shrink_sequential(voxel2clip.projector, {2048: S["projector_hidden"]})
    voxel2clip.requires_grad_(False).eval()
    prior_network = models.VersatileDiffusionPriorNetwork(dim=D, depth=S["prior_depth"], dim_head=S["prior_dim_head"],
                                                          heads=S["prior_heads"], causal=False, num_tokens=T,
                                                          learned_query_mode="pos_emb")
    diffusion_prior = models.BrainDiffusionPrior(net=prior_network, image_embed_dim=D,
                                                 condition_on_text_encodings=False, timesteps=100,
                                                 cond_drop_prob=0.2, image_embed_scale=None, voxel2clip=voxel2clip)
    ckpt = torch.load(REPO / "tests" / "fixtures" / "mindeye1" / "prior" / "last.pth", map_location="cpu")
    missing, unexpected = diffusion_prior.load_state_dict(ckpt["model_state_dict"], strict=False)
    if missing or unexpected:
        raise SystemExit(f"the fixture prior does not fit: {missing[:3]} {unexpected[:3]}")
    diffusion_prior.eval()

    # a tiny Versatile-Diffusion-like image UNet + VAE (diffusers 0.13), saved as a snapshot's folders
    from diffusers import AutoencoderKL, UNet2DConditionModel, UniPCMultistepScheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=D,
                                attention_head_dim=8, norm_num_groups=32).eval()
    vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), norm_num_groups=32, latent_channels=4).eval()
    vd = out / "vd_tiny"
    if vd.exists():
        shutil.rmtree(vd)
    unet.save_pretrained(vd / "image_unet")  # a snapshot's image_unet/: plain Transformer2DModel blocks
    vae.save_pretrained(vd / "vae")
    (vd / "scheduler").mkdir(parents=True)
    (vd / "scheduler" / "scheduler_config.json").write_text(json.dumps(VD_SCHEDULER, indent=1))
    noise_scheduler = UniPCMultistepScheduler.from_pretrained(vd, subfolder="scheduler")
    # the dual-guided UNet as VersatileDiffusionDualGuidedPipeline makes it (diffusers' own _convert_to_dual_attention:
    # each image transformer paired with the text UNet's), then Reconstructions.py's dual-guidance settings (its
    # statements, executed; the image condition's length 257 -> the fixture's token count)
    from diffusers import VersatileDiffusionDualGuidedPipeline
    from diffusers.models import DualTransformer2DModel

    torch.manual_seed(1)
    text_unet = UNet2DConditionModel(**{k: v for k, v in unet.config.items() if not k.startswith("_")}).eval()
    pipe_parts = types.SimpleNamespace(image_unet=unet, text_unet=text_unet)
    VersatileDiffusionDualGuidedPipeline._convert_to_dual_attention(pipe_parts)
    recon_src = (src / "Reconstructions.py").read_text()
    start = recon_src.index("text_image_ratio = .0")
    stop = recon_src.index("unet = vd_pipe.image_unet")
    dual_code = recon_src[start:stop]
    if "module.condition_lengths[i] = 257" not in dual_code:
        raise SystemExit("Reconstructions.py's dual-guidance loop no longer sets condition length 257")
    dual_code = dual_code.replace("module.condition_lengths[i] = 257", f"module.condition_lengths[i] = {T}")
    exec(compile(dual_code, "Reconstructions.py[dual guidance]", "exec"),
         {"vd_pipe": pipe_parts, "DualTransformer2DModel": DualTransformer2DModel})
    n_dual = sum(isinstance(m, DualTransformer2DModel) and m.mix_ratio == 0 for m in unet.modules())
    if not n_dual:
        raise SystemExit("no dual transformer blocks")

    # Clipper as the reference builds it, its embed_image replaced on the instance (module docstring)
    clip_extractor = models.Clipper("ViT-L/14", hidden_state=True, norm_embs=True, device=torch.device("cpu"))
    embed, w, b = token_embedder()
    clip_extractor.embed_image = embed

    # utils.reconstruction with the fixture's widths
    import inspect

    code = inspect.getsource(utils.reconstruction)
    subs = [("view(len(voxel),-1,768)", f"view(len(voxel),-1,{D})"),
            ("[recons_per_sample, 4, 64, 64]", f"[recons_per_sample, 4, {LATENT}, {LATENT}]"),
            ("torch.zeros(len(input_embedding),77,768)", f"torch.zeros(len(input_embedding),77,{D})")]
    for old, new in subs:
        if old not in code:
            raise SystemExit(f"utils.reconstruction no longer contains {old!r}")
        code = code.replace(old, new)
    ns = dict(utils.__dict__)
    sims_log = []
    original_bcs = utils.batchwise_cosine_similarity

    def logged(z, bb):
        out_ = original_bcs(z, bb)
        sims_log.append(float(out_.item()))
        return out_

    ns["batchwise_cosine_similarity"] = logged
    exec(compile(code, "utils.reconstruction", "exec"), ns)
    reconstruction = ns["reconstruction"]

    g = torch.Generator().manual_seed(1)
    rec = {"embed_w": w.numpy(), "embed_b": b.numpy()}
    voxel = torch.randn(2, V, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g)
    ae_preds = torch.randn(1, 4, LATENT, LATENT, generator=g) * 0.5
    with torch.no_grad():
        blurry = vae.decode(ae_preds / 0.18215).sample / 2 + 0.5  # Reconstructions.py (there in fp16)
    rec.update(voxel=voxel.numpy(), ae_preds=ae_preds.numpy(), blurry=blurry.numpy())
    # the prior's samples, as utils.reconstruction draws them (recorded to separate the prior's float drift)
    priors_log = []
    original_loop = diffusion_prior.p_sample_loop

    def logged_loop(*a, **k):
        x = original_loop(*a, **k)
        priors_log.append(x.detach().clone())
        return x

    diffusion_prior.p_sample_loop = logged_loop
    runs = {"img2img": dict(voxel=voxel[[0]], img_lowlevel=blurry, recons_per_sample=3, seed=42),
            "noise": dict(voxel=voxel[[1]], img_lowlevel=None, recons_per_sample=2, seed=5)}
    for name, r in runs.items():
        sims_log.clear()
        with torch.no_grad():
            _, brain_recons, best_picks, _ = reconstruction(
                image, r["voxel"], clip_extractor, unet, vae, noise_scheduler, voxel2clip_cls=None,
                diffusion_priors=[diffusion_prior], text_token=None, img_lowlevel=r["img_lowlevel"],
                num_inference_steps=20, recons_per_sample=r["recons_per_sample"], guidance_scale=3.5,
                img2img_strength=0.85, timesteps_prior=100, seed=r["seed"], retrieve=False, plotting=False,
                img_variations=False, verbose=False)
        rec[f"{name}_recons"] = brain_recons.numpy()
        rec[f"{name}_best"] = np.asarray(best_picks)
        rec[f"{name}_sims"] = np.asarray(sims_log)
        rec[f"{name}_prior"] = priors_log[-1].numpy()
        rec[f"{name}_seed"], rec[f"{name}_n"] = r["seed"], r["recons_per_sample"]
    np.savez(out / "reference_outputs.npz", **rec)
    from importlib.metadata import version

    meta = {"reference": "MedARC-AI/fMRI-reconstruction-NSD", "commit": commit,
            "versions": {d: version(d) for d in ("torch", "diffusers", "transformers", "dalle2-pytorch", "numpy")},
            "prior": "tests/fixtures/mindeye1/prior/last.pth", "vd_scheduler": VD_SCHEDULER,
            "dual_transformer_blocks": n_dual,
            "code_overrides": [f"utils.reconstruction: {o!r} -> {n!r}" for o, n in subs] + [
                "Clipper.embed_image replaced on the instance by a seeded 4-token conv embedder (embed_w, embed_b)",
                f"Reconstructions.py dual guidance: module.condition_lengths[i] = 257 -> {T}",
                f"VersatileDiffusionPriorNetwork(num_tokens={T}) (Reconstructions.py: default 257)",
                "models.py: VersatileDiffusionPriorNetwork.forward view(B, -1, 768) -> view(B, -1, self.dim) "
                "(mindeye1.py's substitution)"],
            "runs": {k: {kk: (vv if not torch.is_tensor(vv) else list(vv.shape)) for kk, vv in v.items()}
                     for k, v in runs.items()},
            "outputs": {k: list(np.shape(v)) for k, v in rec.items()}}
    (out / "shapes.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
