"""Fixture generator: MindEye2's unCLIP stage (Stability's sgm ``DiffusionEngine`` + ``utils.unclip_recon``).

Runs the reference's own code, read at run time from ``--reference`` (MedARC-AI/MindEyeV2, a checkout or a bare git
dir): ``src/generative_models`` (sgm) is extracted to a temporary folder and imported; ``unclip_recon`` is taken
from ``src/utils.py`` by name (its module imports webdataset, matplotlib, ... which the function does not use) and
executed. The engine is built from the reference's ``configs/unclip6.yaml`` exactly as ``recon_inference.ipynb``
builds it (first stage ``sgm.models.autoencoder.AutoencoderKL``, sampler steps 38), at a tiny size:

* network: model channels 32, multipliers [1, 1], one res block per level, attention at resolution 2 only with
  transformer depth [1, 2] (no attention at the first level, depth 2 below and in the middle: SDXL's pattern on two
  levels instead of three), 8 channels per head,
  cross-attention width 16 (the MindEye2 fixture's token width), ``softmax`` attention (no xformers here);
  ``adm_in_channels`` stays 1024 (four 256-wide size embeddings, as published);
* first stage: ``ch`` 32, multipliers [1, 1], one res block (factor 2), vanilla attention;
* conditioner: the two size embedders as published; the bigG image embedder is left out (it cannot be built
  without its weights and ``unclip_recon`` never calls it; ``vector_suffix`` is computed as the notebook computes
  it, without the placeholder image);
* every parameter re-drawn from a seeded normal (sgm zero-initialises its output layers, which would make the
  UNet's output 0 and the comparison empty).

Override of the reference's code (the only one): ``unclip_recon``'s start latent ``randn(num_samples, 4, 96, 96)``
is read with 96 replaced by the tiny latent side (``--latent``), so the run fits a CPU.

On the CPU every draw of ``unclip_recon`` comes from the global generator in the order start latent, unconditional
tokens, noise, offset noise: ``torch.manual_seed(seed)`` before the call is what mindvis' ``torch.Generator`` replays.

Writes (``--out``, default ``tests/fixtures/mindeye2_unclip``): ``unclip_tiny.ckpt`` (``{"state_dict": ...}``, the
layout ``recon_inference.ipynb`` loads), ``reference_outputs.npz`` and ``shapes.json`` (keys, shapes, versions,
commit, overrides). Environment: ``tools/reference_fixtures/requirements-unclip.txt`` (a separate venv).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Reference, definitions  # noqa: E402

def reseed_parameters(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:
                continue  # e.g. OpenCLIP's logit scale
            if p.ndim == 1 and ("norm" in name or name.endswith((".g", "gamma"))):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" /
                                         "mindeye2_unclip"))
    ap.add_argument("--latent", type=int, default=12, help="latent side in place of 96")
    args = ap.parse_args()
    ref = Reference(args.reference)
    tmp = Path(tempfile.mkdtemp(prefix="me2-unclip-"))
    ref.extract("src/generative_models", tmp)
    sys.path[:0] = [str(tmp / "src"), str(tmp / "src" / "generative_models")]

    import open_clip
    from omegaconf import OmegaConf

    from sgm.models.diffusion import DiffusionEngine
    from sgm.util import append_dims

    config = OmegaConf.to_container(OmegaConf.create(ref.read("src/generative_models/configs/unclip6.yaml")),
                                    resolve=True)
    p = config["model"]["params"]
    net = p["network_config"]["params"]
    overrides = {"model_channels": 32, "channel_mult": [1, 1], "num_res_blocks": 1, "attention_resolutions": [2],
                 "transformer_depth": [1, 2], "num_head_channels": 8, "context_dim": 16,
                 "spatial_transformer_attn_type": "softmax", "use_checkpoint": False}
    net.update(overrides)
    fs = p["first_stage_config"]
    fs["target"] = "sgm.models.autoencoder.AutoencoderKL"  # as recon_inference.ipynb
    fs["params"]["ddconfig"].update({"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "attn_type": "vanilla",
                                     "resolution": 32})
    # the bigG image embedder (unused by unclip_recon: the prior's tokens are the condition) is left out: it cannot be
    # built without its weights; the converter's handling of its keys is tested on its own
    image_embedder = p["conditioner_config"]["params"]["emb_models"].pop(0)
    if "FrozenOpenCLIPImageEmbedder" not in image_embedder["target"]:
        raise SystemExit(f"unclip6.yaml's first embedder is {image_embedder['target']}")
    p["sampler_config"]["params"]["num_steps"] = 38  # as recon_inference.ipynb
    p["sampler_config"]["params"]["device"] = "cpu"  # the sampler's default device is cuda
    torch.manual_seed(0)
    engine = DiffusionEngine(network_config=p["network_config"], denoiser_config=p["denoiser_config"],
                             first_stage_config=fs, conditioner_config=p["conditioner_config"],
                             sampler_config=p["sampler_config"], scale_factor=p["scale_factor"],
                             disable_first_stage_autocast=p["disable_first_stage_autocast"])
    engine.eval().requires_grad_(False)
    reseed_parameters(engine, 20241130)
    sd = engine.state_dict()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, out / "unclip_tiny.ckpt")

    # the vector condition, as recon_inference.ipynb computes it
    batch = {"original_size_as_tuple": torch.ones(1, 2) * 768,
             "crop_coords_top_left": torch.zeros(1, 2)}
    vector_suffix = engine.conditioner(batch)["vector"]

    # unclip_recon, with the start latent's side shrunk
    src = definitions(ref.read("src/utils.py"), ["unclip_recon"])
    if "4,96,96" not in src:
        raise SystemExit("unclip_recon no longer draws randn(num_samples,4,96,96)")
    src = src.replace("4,96,96", f"4,{args.latent},{args.latent}")
    ns = {"torch": torch, "append_dims": append_dims, "device": "cpu"}
    exec(compile(src, "utils.unclip_recon", "exec"), ns)
    unclip_recon = ns["unclip_recon"]

    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(2, 4, 16, generator=g)
    rec = {"tokens": tokens.numpy(), "vector_suffix": vector_suffix.numpy()}
    for name, (row, n, seed) in {"one": (0, 1, 11), "two": (1, 2, 12)}.items():
        torch.manual_seed(seed)
        rec[f"samples_{name}"] = unclip_recon(tokens[[row]], engine, vector_suffix, num_samples=n).numpy()
        rec[f"seed_{name}"], rec[f"row_{name}"], rec[f"num_samples_{name}"] = seed, row, n
    # single calls, to locate a difference: the UNet, the guided denoiser, the first stage
    x = torch.randn(2, 4, args.latent, args.latent, generator=g)
    t = torch.tensor([3, 980])
    ctx = {"crossattn": tokens, "vector": vector_suffix.repeat(2, 1)}
    with torch.no_grad():
        rec["unet_x"], rec["unet_t"] = x.numpy(), t.numpy()
        rec["unet_out"] = engine.model(x, t, ctx).numpy()
        sig = engine.sampler.discretization(38)
        s = torch.stack([sig[5], sig[30]])
        uc = {"crossattn": torch.randn(tokens.shape, generator=g), "vector": vector_suffix.repeat(2, 1)}
        rec["denoise_sigma"], rec["denoise_uc"] = s.numpy(), uc["crossattn"].numpy()
        rec["denoise_out"] = engine.sampler.denoise(x, lambda a, b, c: engine.denoiser(engine.model, a, b, c), s,
                                                    ctx, uc).numpy()
        rec["sigmas_38"] = sig.numpy()
        rec["decode_out"] = engine.decode_first_stage(x).numpy()
    np.savez(out / "reference_outputs.npz", **rec)
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for dist in ("open_clip_torch", "pytorch_lightning", "kornia", "transformers", "omegaconf", "einops", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    meta = {"reference": "MedARC-AI/MindEyeV2", "commit": ref.commit(), "versions": versions,
            "config": "src/generative_models/configs/unclip6.yaml", "network_overrides": overrides,
            "first_stage_overrides": fs["params"]["ddconfig"],
            "conditioner": "the FrozenOpenCLIPImageEmbedder left out (its weights cannot be had; unclip_recon never "
                           "calls it); the two ConcatTimestepEmbedderND as configured",
            "code_override": f"unclip_recon: randn(num_samples,4,96,96) -> randn(num_samples,4,{args.latent},"
                             f"{args.latent})",
            "parameters": "re-drawn: 1 + 0.1 N(0,1) for 1-d norm weights, 0.05 N(0,1) other 1-d, N(0,1)/sqrt(fan-in)",
            "checkpoint_keys": {k: list(v.shape) for k, v in sd.items()},
            "outputs": {k: list(np.shape(v)) for k, v in rec.items()}}
    (out / "shapes.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()):,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
