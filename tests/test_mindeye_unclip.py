"""MindEye2's unCLIP stage against the reference's own code (tools/reference_fixtures/mindeye2_unclip.py: sgm's
DiffusionEngine built from unclip6.yaml at a tiny size, and utils.unclip_recon), and the converters of MindEye2's
generator files."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mindvis.compat.safe_pickle import CheckpointError

FIX = Path(__file__).parent / "fixtures" / "mindeye2_unclip"


@pytest.fixture(scope="module")
def unclip(tmp_path_factory):
    from mindvis.compat.unclip import convert_unclip
    from mindvis.pipelines.mindeye_generators import UnclipGenerator

    out = tmp_path_factory.mktemp("unclip") / "unclip"
    report = convert_unclip(FIX / "unclip_tiny.ckpt", out, num_head_channels=8, latent_size=12)
    return UnclipGenerator.from_pretrained(out), report, np.load(FIX / "reference_outputs.npz")


def test_conversion_report_and_parts(unclip):
    gen, report, _ = unclip
    assert report["checked"] == {"denoiser.sigmas": "equals the scaled-linear schedule"}
    assert "290 tensors" in report["converted"]["unet"] and "120 tensors" in report["converted"]["vae"]
    cfg = gen.unet.config
    assert cfg.addition_embed_type == "text_time" and cfg.projection_class_embeddings_input_dim == 1024
    assert cfg.addition_time_embed_dim == 256 and cfg.cross_attention_dim == 16
    assert list(cfg.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert gen.latent_shape == (4, 12, 12) and gen.image_size == 24


def test_unet_denoiser_decoder_and_schedule_equal_the_reference(unclip):
    from mindvis.pipelines.mindeye_recon import sgm_denoise
    from mindvis.pipelines.mindeye_schedules import discrete_sigma_table, sgm_sigmas

    gen, _, r = unclip
    x, tok = torch.from_numpy(r["unet_x"]), torch.from_numpy(r["tokens"])
    assert np.array_equal(gen.vector(1).numpy(), [[768, 768, 0, 0]])
    with torch.no_grad():
        eps = gen.eps(x, torch.from_numpy(r["unet_t"]), gen.context(tok))
        assert np.abs(eps.numpy() - r["unet_out"]).max() < 1e-5
        uc = {"crossattn": torch.from_numpy(r["denoise_uc"]), "vector": gen.vector(2)}
        den = sgm_denoise(gen, x, torch.from_numpy(r["denoise_sigma"]), gen.cat(uc, gen.context(tok)), 5.0,
                          discrete_sigma_table(gen.alphas_cumprod))
        assert np.abs(den.numpy() - r["denoise_out"]).max() < 1e-4
        assert np.abs(gen.decode(x).numpy() - r["decode_out"]).max() < 1e-4
    assert np.array_equal(sgm_sigmas(gen.alphas_cumprod, 38).numpy(), r["sigmas_38"])


@pytest.mark.parametrize("name", ["one", "two"])
def test_unclip_recon_is_reproduced_draw_for_draw(unclip, name):
    """The whole stage: start latent, random unconditional tokens, noise and offset noise from one seeded stream
    (the reference's global CPU generator), 38 Euler steps with CFG 5, decoding, x * 0.8 + 0.2."""
    from mindvis.pipelines.mindeye_recon import mindeye2_reconstruct

    gen, _, r = unclip
    tok = torch.from_numpy(r["tokens"])[[int(r[f"row_{name}"])]]
    out = mindeye2_reconstruct(gen, tok, int(r[f"num_samples_{name}"]),
                               generator=torch.Generator().manual_seed(int(r[f"seed_{name}"])))
    ref = r[f"samples_{name}"]
    assert out.shape == ref.shape and np.abs(out.numpy() - ref).max() < 1e-4
    assert ref.std() > 0.01  # the comparison is not of constants


def test_converter_skips_the_image_embedder_and_refuses_unknown_keys(tmp_path):
    from mindvis.compat.unclip import convert_unclip, read_state_dict

    sd = read_state_dict(FIX / "unclip_tiny.ckpt")
    sd["conditioner.embedders.0.model.visual.proj"] = torch.zeros(4, 4)
    report = convert_unclip(dict(sd), tmp_path / "a", num_head_channels=8, latent_size=12)
    assert "conditioner.embedders.0.*" in report["not_converted"]
    bad = dict(sd, **{"model_ema.decay": torch.tensor(0.9)})
    with pytest.raises(CheckpointError, match="model_ema.decay"):
        convert_unclip(bad, tmp_path / "b", num_head_channels=8, latent_size=12)
    wrong = dict(sd, **{"denoiser.sigmas": sd["denoiser.sigmas"] * 1.1})
    with pytest.raises(CheckpointError, match="scaled-linear"):
        convert_unclip(wrong, tmp_path / "c", num_head_channels=8, latent_size=12)


def test_blurry_vae_and_converter_files(tmp_path):
    """sd_image_var_autoenc.pth (a diffusers AutoencoderKL state dict) and bigG_to_L_epoch8.pth, through
    mindvis-convert."""
    from diffusers import AutoencoderKL

    from mindvis.commands import convert_main
    from mindvis.pipelines.mindeye_lowlevel import load_vae
    from mindvis.pipelines.mindeye_refine import BigGToL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, norm_num_groups=32)
    torch.save(vae.state_dict(), tmp_path / "sd_image_var_autoenc.pth")
    assert convert_main(["from-sd-autoencoder", str(tmp_path / "sd_image_var_autoenc.pth"), str(tmp_path / "vae")]) == 0
    loaded = load_vae(tmp_path / "vae")
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(z).sample, vae.decode(z).sample, atol=1e-6)
    conv = BigGToL(4, 5, 16, 8)
    torch.save({"model_state_dict": conv.state_dict(), "epoch": 8}, tmp_path / "bigG_to_L_epoch8.pth")
    assert convert_main(["from-bigg-to-l", str(tmp_path / "bigG_to_L_epoch8.pth"), str(tmp_path / "c.safetensors")]) == 0
    from safetensors.torch import load_file

    again = BigGToL.from_state_dict(load_file(tmp_path / "c.safetensors"))
    x = torch.randn(2, 4, 16)
    assert again(x).shape == (2, 5, 8) and torch.allclose(again(x), conv(x))
    assert convert_main(["from-unclip", str(tmp_path / "c.safetensors"), str(tmp_path / "u")]) == 2
