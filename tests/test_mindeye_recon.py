"""MindEye's reconstruction pipelines, mindvis-sample for MindEye models and the NSD protocols, end to end.

The release-to-table path is run on the committed checkpoints of the references (tests/fixtures/mindeye1,
mindeye2, mindeye2_unclip) with tiny generator parts built here: convert, sample, evaluate."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import TINY_WORLD

FIX = Path(__file__).parent / "fixtures"
#: a tiny synthetic NSD whose voxel count (40) is the MindEye fixtures' (subject 1 of MindEye2's too)
NSD40 = {**TINY_WORLD, "nsd_sessions": 2, "nsd_shared": 20, "nsd_volume": [8, 8, 8],
         "nsd_voxels": [10, 8, 6, 6, 4, 4, 2]}


@pytest.fixture(scope="module")
def nsd40(tmp_path_factory):
    from mindvis.data_prep import nsd as prep
    from mindvis.world import SyntheticWorld, SyntheticWorldConfig

    root = tmp_path_factory.mktemp("nsd40") / "world"
    SyntheticWorld(SyntheticWorldConfig(**NSD40)).write(root, ["nsd"])
    return prep.prepare_nsd(root / "NSD", "subj01", tmp_path_factory.mktemp("prep") / "subj01", image_size=64)


def tiny_vd(folder: Path, d: int = 16, latent: int = 16) -> Path:
    """A Versatile-Diffusion-like snapshot: image_unet/ (cross-attention width d), vae/, scheduler/ (VD's config)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=d,
                         attention_head_dim=8, norm_num_groups=32).save_pretrained(folder / "image_unet")
    AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), norm_num_groups=32).save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None, "clip_sample": False}))
    return folder


def tiny_token_embedder(tokens: int = 4, dim: int = 16):
    """An ImageEmbedder of ``tokens`` x ``dim`` tokens (no CLIP ViT has the fixtures' 4 tokens): a seeded conv."""
    from mindvis.models.image_embedders import ImageEmbedder

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, dim, 4, 4)
    side = int(tokens ** 0.5)

    def fn(x):
        return torch.nn.functional.adaptive_avg_pool2d(conv(x), side).flatten(2).transpose(1, 2)

    return ImageEmbedder("tiny-tokens", fn, 16, (0.5,) * 3, (0.5,) * 3)


def tiny_openclip(folder: Path) -> Path:
    """An OpenCLIP folder whose visual tower gives 4 patch tokens of width 16 (MindEye2's fixture shape)."""
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 64, "layers": 1, "width": 16, "head_width": 8,
                                          "patch_size": 32},
           "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 8, "heads": 2, "layers": 1}}
    from open_clip.model import CLIP

    torch.manual_seed(2)
    model = CLIP(**cfg)
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def _report(folder):
    return json.loads((Path(folder) / "nsd_eval.json").read_text())


def test_mindeye1_release_to_table(nsd40, tmp_path, monkeypatch):
    """MindEye1's released layout -> mindvis folders -> 16-candidate img2img reconstructions -> the suite under
    --protocol mindeye1 (best of N by token similarity)."""
    from mindvis.compat.mindeye import convert_mindeye1
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.evaluation.nsd_suite import nsd_suite
    from mindvis.pipelines import mindeye_sample
    from mindvis.pipelines.sample_cli import main as sample_main

    me1, low = tmp_path / "me1", tmp_path / "me1-lowlevel"
    convert_mindeye1(FIX / "mindeye1" / "prior" / "last.pth", me1)  # 1. convert (mindvis-convert from-mindeye1)
    convert_mindeye1(FIX / "mindeye1" / "autoencoder" / "epoch001.pth", low)
    vd = tiny_vd(tmp_path / "vd")
    monkeypatch.setattr(mindeye_sample, "_embedder", lambda space, cfg: (tiny_token_embedder(), None))
    out = tmp_path / "s1"
    assert sample_main(["--model", str(me1), "--generator", str(vd), "--lowlevel", str(low), "--data-path",
                        str(nsd40), "--num-samples", "3", "--steps", "5", "--limit", "4", "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    assert arrays["samples"].shape == (4, 3, 16, 16, 3) and arrays["ground_truth"].shape == (4, 64, 64, 3)
    assert arrays["blurry"].shape == (4, 64, 64, 3) and arrays["best_of_n_scores"].shape == (4, 3)
    assert arrays["embeddings_pred"].shape == (4, 64) == arrays["embeddings_target"].shape
    assert meta["family"] == "mindeye1" and meta["prior_steps"] == 100 and meta["seed"] == 42
    assert meta["blurry_resized"].startswith("64 px -> 16 px")
    assert eval_main(["--samples", str(out), "--suite", "nsd", "--protocol", "mindeye1"]) == 0  # 3. evaluate
    report = _report(out)
    prot = report["protocol"]
    assert prot["name"] == "mindeye1" and "N = 3" in prot["applied"][0]
    assert any("num_samples=3" in d for d in prot["deviations"]) and any("steps=5" in d for d in prot["deviations"])
    # the protocol scored exactly the best candidate of each image
    best = arrays["best_of_n_scores"].argmax(1)
    chosen = torch.from_numpy(arrays["samples"][np.arange(4), best]).permute(0, 3, 1, 2).float()[:, None] / 255
    truth = torch.from_numpy(arrays["ground_truth"]).permute(0, 3, 1, 2).float() / 255
    direct = nsd_suite(chosen, truth, metrics=("pixcorr", "ssim"))
    for m in ("pixcorr", "ssim"):
        assert report["metrics"][m]["mean"] == pytest.approx(direct["metrics"][m]["mean"], abs=1e-12)
    assert report["metrics"]["image_retrieval"]["subset"] == 4
    assert "Protocol mindeye1" in (out / "nsd_eval.md").read_text()
    # the same samples scored without a protocol: every candidate index, no selection
    assert eval_main(["--samples", str(out), "--suite", "nsd", "--out", str(tmp_path / "plain")]) == 0
    assert _report(tmp_path / "plain")["settings"]["samples_per_image"] == 3


def test_mindeye2_release_to_table(nsd40, tmp_path):
    """MindEye2's released layout -> mindvis folders; the unCLIP checkpoint (sgm) and the blurry VAE converted ->
    reconstructions from the averaged outputs of each repetition -> the suite under --protocol mindeye2 (0.75
    reconstruction + 0.25 blurry)."""
    from diffusers import AutoencoderKL

    from mindvis.commands import convert_main
    from mindvis.compat.mindeye import convert_mindeye2
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.evaluation.nsd_suite import nsd_suite
    from mindvis.pipelines.sample_cli import main as sample_main

    me2 = tmp_path / "me2"
    convert_mindeye2(FIX / "mindeye2" / "multisubject" / "last.pth", me2, subject=0)  # (mindvis-convert from-mindeye2)
    assert convert_main(["from-unclip", str(FIX / "mindeye2_unclip" / "unclip_tiny.ckpt"), str(tmp_path / "unclip"),
                         "--num-head-channels", "8", "--latent-size", "12"]) == 0
    torch.manual_seed(3)
    torch.save(AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                             up_block_types=("UpDecoderBlock2D",), norm_num_groups=32).state_dict(),
               tmp_path / "sd_image_var_autoenc.pth")
    assert convert_main(["from-sd-autoencoder", str(tmp_path / "sd_image_var_autoenc.pth"), str(tmp_path / "vae")]) == 0
    clip = tiny_openclip(tmp_path / "openclip")
    out = tmp_path / "s2"
    assert sample_main(["--model", str(me2), "--generator", str(tmp_path / "unclip"), "--blurry-vae",
                        str(tmp_path / "vae"), "--data-path", str(nsd40), "--target",
                        f"openclip-bigg-14-tokens:{clip}", "--steps", "3", "--limit", "4", "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    assert arrays["samples"].shape == (4, 1, 24, 24, 3) and arrays["blurry"].shape == (4, 28, 28, 3)
    assert arrays["embeddings_target"].shape == (4, 64) and meta["test_average"].startswith("outputs of each of 3")
    assert meta["prior_sampler"].startswith("strided DDIM") and meta["prior_steps"] == 20
    assert eval_main(["--samples", str(out), "--suite", "nsd", "--protocol", "mindeye2"]) == 0
    report = _report(out)
    assert "no SDXL refinement" in " ".join(report["protocol"]["deviations"])
    assert report["settings"]["procedure"]["blend"].startswith("MindEye2's enhanced evaluation")
    samples = torch.from_numpy(arrays["samples"]).permute(0, 1, 4, 2, 3).float() / 255
    truth = torch.from_numpy(arrays["ground_truth"]).permute(0, 3, 1, 2).float() / 255
    blurry = torch.from_numpy(arrays["blurry"]).permute(0, 3, 1, 2).float() / 255
    direct = nsd_suite(samples, truth, metrics=("pixcorr",), blurry=blurry)
    assert report["metrics"]["pixcorr"]["mean"] == pytest.approx(direct["metrics"]["pixcorr"]["mean"], abs=1e-12)
    # a protocol the samples cannot satisfy is a one-line error
    assert eval_main(["--samples", str(out), "--suite", "nsd", "--protocol", "mindeye1", "--out",
                      str(tmp_path / "x")]) == 2
    assert eval_main(["--samples", str(out), "--protocol", "mindeye2", "--out", str(tmp_path / "y")]) == 2


def test_voxel_select_and_the_blurry_decoder():
    from mindvis.pipelines.mindeye_lowlevel import BlurryDecoder, voxel_select

    groups = [torch.randn(3, 5), torch.randn(1, 5), torch.randn(2, 5)]
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        choice = float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))
        out = voxel_select(groups, g)
        assert out.shape == (3, 5) and torch.allclose(out[1], groups[1][0])  # one repetition: itself
        if 0.5 < choice <= 0.8:
            assert torch.allclose(out[0], groups[0].mean(0))
            seen.add("mean")
        elif choice > 0.8:
            assert any(torch.allclose(out[0], r) for r in groups[0])
            seen.add("one")
        else:
            lo, hi = groups[0].min(0).values, groups[0].max(0).values
            assert ((out[0] >= lo - 1e-6) & (out[0] <= hi + 1e-6)).all()  # a convex combination
            seen.add("mix")
    assert seen == {"mean", "one", "mix"}
    pix = BlurryDecoder(None)
    assert torch.equal(pix(torch.zeros(1, 3, 4, 4)), torch.full((1, 3, 4, 4), 0.5))
    with pytest.raises(ValueError, match="VAE"):
        pix(torch.zeros(1, 4, 4, 4))


def test_lowlevel_training_writes_a_model_the_sampler_reads(nsd40, tmp_path, cache_dir):
    from mindvis.pipelines.mindeye_lowlevel import main as lowlevel_main
    from mindvis.pipelines.mindeye_sample_inputs import load_lowlevel

    args = ["--data-path", str(nsd40), "--target", "pixels", "--out", str(tmp_path / "low"), "epochs=2",
            "warmup_epochs=1",
            "hidden=16", "n_blocks=1", "latent_channels=32", "grid_side=4", "decoder_channels=[32,32,32]",
            "batch_size=8", f"data.cache_dir={cache_dir}"]
    assert lowlevel_main(args) == 0
    model, meta = load_lowlevel(tmp_path / "low")
    assert meta["target_kind"] == "pixels" and meta["target_shape"] == [3, 16, 16]
    assert "off" in meta["contrastive"] and len(meta["history"]) == 2
    assert model(torch.randn(2, 40)).shape == (2, 3, 16, 16)
    assert lowlevel_main([*args[:4], "--out", str(tmp_path / "bad"), "epochs=1", "grid_side=5"]) == 2


@pytest.mark.slow  # about 25 s on 2 cores (it trains the tiny world's classifier and generator)
def test_the_synthetic_chains_with_the_stand_in_generator(nsd40, tmp_path, cache_dir):
    """Decoder, prior and low-level path of each family (random weights, tiny), the world's small embedding-
    conditioned generator in place of Versatile Diffusion / unCLIP, through mindvis-sample and both protocols."""
    from mindvis.compat.mindeye import MindEyeCheckpoint, _write
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import train_prior
    from mindvis.models.mindeye1 import MindEye1Config, MindEye1Network
    from mindvis.models.mindeye2 import MindEye2Config, MindEye2Network
    from mindvis.models.mindeye_prior import MindEyePrior, MindEyePriorConfig, mindeye2_prior_config
    from mindvis.pipelines.mindeye_lowlevel import main as lowlevel_main
    from mindvis.pipelines.sample_cli import main as sample_main
    from mindvis.world import SyntheticWorldConfig

    gen = train_prior(PriorConfig(image_size=16, images_per_class=1, vq_channels=[32, 32, 32], unet_channels=[32, 32],
                                  context_dim=32, vq_epochs=1, ldm_epochs=1, batch_size=8, condition="embedding",
                                  target="synthetic", cache_dir=str(cache_dir),
                                  synthetic=SyntheticWorldConfig(**NSD40)), tmp_path / "gen")
    assert lowlevel_main(["--data-path", str(nsd40), "--target", "pixels", "--out", str(tmp_path / "low"),
                          "epochs=2", "warmup_epochs=1", "hidden=16", "n_blocks=1", "latent_channels=32", "grid_side=8",
                          "decoder_channels=[32,32,32]", "teacher=synthetic", "maps_hidden=16", "maps_dim=128",
                          f"data.cache_dir={cache_dir}"]) == 0
    torch.manual_seed(0)
    prior_kw = dict(dim=128, num_tokens=1, depth=1, heads=2, dim_head=16)
    me1 = MindEyeCheckpoint("mindeye1", Path("random"), 0,
                            network=MindEye1Network(MindEye1Config(40, 32, 1, 1, 128, 32)),
                            prior=MindEyePrior(MindEyePriorConfig(**prior_kw)))
    _write(me1, tmp_path / "me1")
    me2 = MindEyeCheckpoint("mindeye2", Path("random"), 0,
                            network=MindEye2Network(MindEye2Config([40], 32, 1, tokens=1, clip_dim=128,
                                                                   blurry_channels=32, blurry_side=4,
                                                                   blurry_decoder_channels=[32, 32, 32],
                                                                   blurry_maps_hidden=16, blurry_maps_dim=16)),
                            prior=MindEyePrior(mindeye2_prior_config(**prior_kw)))
    _write(me2, tmp_path / "me2")
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), norm_num_groups=32).save_pretrained(tmp_path / "vae")
    for family, extra in (("me1", ["--lowlevel", str(tmp_path / "low"), "--num-samples", "2"]),
                          ("me2", ["--blurry-vae", str(tmp_path / "vae")])):
        out = tmp_path / f"s-{family}"
        assert sample_main(["--model", str(tmp_path / family), "--generator", str(gen), "--data-path", str(nsd40),
                            "--target", "synthetic", "--steps", "4", "--prior-steps", "5", "--limit", "5",
                            "--out", str(out), *extra]) == 0
        protocol = {"me1": "mindeye1", "me2": "mindeye2"}[family]
        assert eval_main(["--samples", str(out), "--suite", "nsd", "--protocol", protocol]) == 0
        report = _report(out)
        dev = " ".join(report["protocol"]["deviations"])
        assert "stands in for" in dev and "image_retrieval" in report["metrics"]
        assert report["settings"]["sampling"]["stand_in"] is True


def _clip_tokenizer(folder: Path):
    """A byte-level CLIP BPE tokenizer without merges (enough for the plumbing)."""
    from transformers import CLIPTokenizer

    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_sdxl(folder: Path) -> Path:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(4)
    text = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, intermediate_size=37, num_attention_heads=2,
                num_hidden_layers=2, vocab_size=600)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                          up_block_types=("UpDecoderBlock2D",), norm_num_groups=32, scaling_factor=0.13025),
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=16, **text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=16, projection_dim=8, **text)),
        tokenizer=_clip_tokenizer(folder / "tok1"), tokenizer_2=_clip_tokenizer(folder / "tok2"),
        unet=UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                  block_out_channels=(32, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                  attention_head_dim=8, norm_num_groups=32, addition_embed_type="text_time",
                                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 8),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        add_watermarker=False)
    pipe.save_pretrained(folder / "sdxl")
    return folder / "sdxl"


def tiny_git(folder: Path, tokens: int = 5, width: int = 12) -> Path:
    """GIT with a vision tower of ``tokens`` positions of width ``width`` (what the converter feeds it) and its
    processor (a small BERT vocabulary)."""
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    side = int((tokens - 1) ** 0.5)
    torch.manual_seed(5)
    model = GitForCausalLM(GitConfig(vision_config={"hidden_size": width, "image_size": 16 * side, "patch_size": 16,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                                    "intermediate_size": 16},
                                     vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=32, bos_token_id=2, eos_token_id=3,
                                     pad_token_id=0))
    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(25)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    GitProcessor(image_processor=CLIPImageProcessor(), tokenizer=BertTokenizer(str(folder / "vocab.txt"))
                 ).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.mark.slow  # builds tiny SDXL and GIT models (about 20 s)
def test_mindeye2_refinement_with_captions(nsd40, tmp_path):
    """--refine: a caption from the prior's tokens (bigG -> L converter, GIT generating from the converted tokens in
    place of its image encoder's), then SDXL img2img on the unrefined reconstruction (the last 12 of 25 steps)."""
    from safetensors.torch import save_file

    from mindvis.commands import convert_main
    from mindvis.compat.mindeye import convert_mindeye2
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.pipelines.mindeye_refine import BigGToL, Captioner, SDXLRefiner
    from mindvis.pipelines.sample_cli import main as sample_main

    sdxl, git = tiny_sdxl(tmp_path), tiny_git(tmp_path / "git")
    torch.manual_seed(6)
    save_file(BigGToL(4, 5, 16, 12).state_dict(), str(tmp_path / "conv.safetensors"))
    captioner = Captioner.from_pretrained(tmp_path / "conv.safetensors", git)
    caps = captioner(torch.randn(2, 4, 16))
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    refiner = SDXLRefiner.from_pretrained(sdxl)
    img = torch.rand(1, 3, 8, 8)
    a = refiner(img, "w1 w2", size=32, generator=torch.Generator().manual_seed(0))
    b = refiner(img, "w7", size=32, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 3, 32, 32) and 0 <= float(a.min()) and float(a.max()) <= 1 and not torch.equal(a, b)
    me2 = tmp_path / "me2"
    convert_mindeye2(FIX / "mindeye2" / "multisubject" / "last.pth", me2, subject=0)
    assert convert_main(["from-unclip", str(FIX / "mindeye2_unclip" / "unclip_tiny.ckpt"), str(tmp_path / "unclip"),
                         "--num-head-channels", "8", "--latent-size", "12"]) == 0
    out = tmp_path / "s"
    vae = tmp_path / "sdxl" / "vae"  # any AutoencoderKL decodes the blurry latents here
    assert sample_main(["--model", str(me2), "--generator", str(tmp_path / "unclip"), "--blurry-vae", str(vae),
                        "--data-path", str(nsd40), "--steps", "3", "--limit", "2", "--refine", str(sdxl),
                        "--captioner", str(tmp_path / "conv.safetensors"), "--git", str(git), "--refine-size", "32",
                        "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as z:
        assert z["captions"].shape == (2,) and z["unrefined"].shape == (2, 1, 24, 24, 3)
        assert z["samples"].shape == (2, 1, 32, 32, 3)  # refined at --refine-size
        assert json.loads(str(z["meta"]))["refined"] is True
    assert eval_main(["--samples", str(out), "--suite", "nsd", "--protocol", "mindeye2"]) == 0
    assert not any("refinement" in d for d in _report(out)["protocol"]["deviations"])
