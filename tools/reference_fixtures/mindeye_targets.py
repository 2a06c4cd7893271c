"""Tiny random CLIP models and the token targets MindEye's own embedders compute from them; writes the fixtures.

    # MindEye1's Clipper(hidden_state=True, norm_embs=True), in its venv (torch 2.0.1, torchvision 0.15.2,
    # transformers 4.29.2; see README.md here):
    /work/refenv/mindeye1-recipe/bin/python tools/reference_fixtures/mindeye_targets.py mindeye1 \
        --reference /work/.mirror/MedARC-AI+fMRI-reconstruction-NSD/repo --out tests/fixtures/mindeye_targets
    # MindEye2's FrozenOpenCLIPImageEmbedder(output_tokens=True, only_tokens=True), in its venv (torch 2.1.0,
    # open_clip_torch 2.24.0, kornia 0.7.1, pytorch-lightning 2.0.1 for the sgm package's imports):
    /work/refenv/mindeye2-recipe/bin/python tools/reference_fixtures/mindeye_targets.py mindeye2 \
        --reference /work/.mirror/MedARC-AI+MindEyeV2/repo --out tests/fixtures/mindeye_targets

MindEye1: the ``Clipper`` class is read from the reference's ``src/models.py`` and executed with its
``__init__`` as written; ``CLIPVisionModelWithProjection.from_pretrained("openai/clip-vit-large-patch14")`` is
answered with the tiny model saved here (``clip_tiny/``) and ``clip.load`` (the OpenAI package, whose ViT-L/14
weights the hidden-state path does not use) with a stand-in. MindEye2: the reference's ``sgm`` package is extracted
and ``FrozenOpenCLIPImageEmbedder`` imported from it unchanged; its ``open_clip.create_model_and_transforms(arch,
pretrained=version)`` builds the tiny architecture registered here and loads ``openclip_tiny/``'s weights file.
Both embedders are called with float images in [0, 1] as the training scripts call them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Reference, definitions, write_fixture  # noqa: E402

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# (N, H, W): square at the models' size, square downscaled, non-square both ways (upscaled, then cropped by
# MindEye1; stretched by MindEye2), small square upscaled
IMAGE_SETS = {"224": (2, 224, 224), "256": (1, 256, 256), "48x64": (1, 48, 64), "64x48": (1, 64, 48),
              "32": (2, 32, 32)}


def make_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded uint8 images (N, H, W, 3): blocks of random colours (16 px; 4 px below 100 px) with noise of +-3 on
    5 % of the values (they compress well)."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, (n, h, w) in IMAGE_SETS.items():
        blk = 16 if min(h, w) >= 100 else 4
        base = rng.randint(0, 256, (n, h // blk + 1, w // blk + 1, 3))
        img = np.repeat(np.repeat(base, blk, axis=1), blk, axis=2)[:, :h, :w]
        noise = rng.randint(-3, 4, img.shape) * (rng.rand(*img.shape) < 0.05)
        out[name] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return out


def to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter redrawn (seeded): norms' weights around 1, the rest N(0, 0.2^2), so no layer is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.ndim == 1 and ("norm" in name.lower() or name.endswith(("ln_pre.weight", "ln_post.weight",
                                                                                       "ln_final.weight")))
            p.copy_(1 + 0.2 * noise if is_norm_weight and name.endswith("weight") else 0.2 * noise)


def mindeye1(ref: Reference, out_dir: Path) -> None:
    import torchvision
    import transformers
    from torchvision import transforms
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32, projection_dim=8, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(cfg)
    randomize(model, 11)
    folder = out_dir / "clip_tiny"
    model.save_pretrained(folder, safe_serialization=True)

    requested = []
    loaded = CLIPVisionModelWithProjection.from_pretrained(folder).eval()

    def from_pretrained(name, *args, **kwargs):  # the reference asks for openai/clip-vit-large-patch14
        requested.append(name)
        return loaded

    transformers.CLIPVisionModelWithProjection.from_pretrained = from_pretrained
    clip_stub = types.ModuleType("clip")
    clip_stub.load = lambda variant, device=None: (torch.nn.Identity(), None)  # unused by the hidden-state path
    ns = {"torch": torch, "nn": torch.nn, "np": np, "transforms": transforms, "clip": clip_stub}
    exec(compile(definitions(ref.read("src/models.py"), ["Clipper"]), "reference-models", "exec"), ns)
    clipper = ns["Clipper"]("ViT-L/14", hidden_state=True, norm_embs=True, device=torch.device("cpu"))
    images = make_images()
    out = {}
    with torch.no_grad():
        for name, imgs in images.items():
            out[f"images/{name}"] = imgs
            out[f"tokens/{name}"] = clipper.embed_image(to_float(imgs)).float().numpy()
    meta = {"requested_model": requested, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "config": cfg.to_diff_dict()}
    write_fixture(out_dir, "mindeye1", out, meta, ref)


def mindeye2(ref: Reference, out_dir: Path) -> None:
    import kornia
    import open_clip

    folder = out_dir / "openclip_tiny"
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": 8, "quick_gelu": False,
                 "vision_cfg": {"image_size": 224, "layers": 2, "width": 16, "head_width": 8, "mlp_ratio": 2.5,
                                "patch_size": 32},
                 "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 8, "heads": 2, "layers": 1}}
    arch = "mindvis-tiny-ViT"
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / f"{arch}.json"
        cfg_file.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(cfg_file)
        model = open_clip.create_model(arch)
        randomize(model, 12)
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
        (folder / "open_clip_config.json").write_text(json.dumps(
            {"model_cfg": model_cfg, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}, indent=1) + "\n")

        src = Path(tmp) / "reference"
        ref.extract("src/generative_models/sgm", src)
        sys.path.insert(0, str(src / "src"))
        sys.path.insert(0, str(src / "src" / "generative_models"))
        from generative_models.sgm.modules.encoders.modules import FrozenOpenCLIPImageEmbedder

        # Train.ipynb: FrozenOpenCLIPImageEmbedder(arch="ViT-bigG-14", version="laion2b_s39b_b160k",
        # output_tokens=True, only_tokens=True); here the tiny architecture and its weights file
        embedder = FrozenOpenCLIPImageEmbedder(arch=arch, version=str(folder / "open_clip_pytorch_model.bin"),
                                               output_tokens=True, only_tokens=True)
        images = make_images()
        out = {}
        with torch.no_grad():
            for name, imgs in images.items():
                out[f"images/{name}"] = imgs
                out[f"tokens/{name}"] = embedder(to_float(imgs)).float().numpy()
    meta = {"torch": torch.__version__, "open_clip": open_clip.version.__version__, "kornia": kornia.__version__,
            "model_cfg": model_cfg, "arch_name": arch}
    write_fixture(out_dir, "mindeye2", out, meta, ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["mindeye1", "mindeye2"])
    ap.add_argument("--reference", required=True, help="checkout folder or bare git dir of the reference")
    ap.add_argument("--out", default="tests/fixtures/mindeye_targets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"mindeye1": mindeye1, "mindeye2": mindeye2}[args.which](Reference(args.reference), Path(args.out))


if __name__ == "__main__":
    main()
