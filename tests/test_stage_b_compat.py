"""The original MinD-Vis stage-B checkpoint and its CompVis prior, converted to diffusers components,
reproduce the original's outputs; the PLMS scheduler reproduces the original sampler."""
import numpy as np
import pytest
import torch

from mindvis.compat.ldm import PriorFormatError, load_compvis_ldm, load_original_stage_b
from mindvis.models.dc_ldm import DCLDM
from mindvis.models.priors import load_prior
from mindvis.pipelines import MindVisPipeline

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def original():
    c = load_original_stage_b(FIXTURES / "finetuned.pth", FIXTURES / "ldm_label2img", FIXTURES / "fmri_encoder.pth")
    return c, DCLDM(c["unet"], c["vae"], c["conditioner"], c["scheduler_config"])


def close(a, b, tol=1e-5):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def test_conditioner_matches(original, reference):
    c, _ = original
    with torch.no_grad():
        close(c["conditioner"](torch.from_numpy(reference["ldm_fmri"])), reference["ldm_cond"])


def test_unet_noise_prediction_with_time_conditioning_matches(original, reference):
    _, m = original
    ctx = torch.from_numpy(reference["ldm_cond"])
    with torch.no_grad():
        eps = m.predict_noise(torch.from_numpy(reference["ldm_zt"]), torch.from_numpy(reference["ldm_t"]), ctx,
                              m.conditioner.time_embedding(ctx))
    close(eps, reference["ldm_eps"])


def test_vq_first_stage_matches_with_scale_factor_one(original, reference):
    c, m = original
    assert type(c["vae"]).__name__ == "VQModel" and m.scale_factor == 1.0
    with torch.no_grad():
        close(m.decode_latents(torch.from_numpy(reference["vq_z"])), reference["vq_decoded"])
        close(m.encode_images(torch.from_numpy(reference["vq_image"])), reference["vq_encoded"])


def test_noise_schedule_is_ldm_linear(original):
    c, m = original
    betas = m.noise_scheduler.betas.numpy()
    np.testing.assert_allclose(betas, np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2, rtol=1e-5)


def test_plms_matches_the_original_sampler(original, reference):
    _, m = original
    assert int(reference["plms_steps"]) == 10
    images, latents = MindVisPipeline(m)(torch.from_numpy(reference["ldm_fmri"]), num_inference_steps=10,
                                         scheduler="plms", latents=torch.from_numpy(reference["plms_xT"]),
                                         return_latents=True)
    close(latents, reference["plms_latent"], 1e-4)
    close(images[:, 0], reference["plms_image"], 1e-4)


def test_save_pretrained_round_trip(original, reference, tmp_path):
    _, m = original
    m.save_pretrained(tmp_path / "m")
    again = DCLDM.from_pretrained(tmp_path / "m")
    fmri, xt = torch.from_numpy(reference["ldm_fmri"]), torch.from_numpy(reference["plms_xT"])
    a = MindVisPipeline(m)(fmri, num_inference_steps=3, latents=xt)
    b = MindVisPipeline(again)(fmri, num_inference_steps=3, latents=xt)
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="not a saved DC-LDM"):
        DCLDM.from_pretrained(tmp_path)


def test_compvis_prior_loads_and_is_cached(tmp_path):
    unet, vae, sched = load_prior(FIXTURES / "ldm_label2img", cache_dir=tmp_path)
    assert unet.config.class_embed_type == "identity" and unet.config.cross_attention_dim == 32
    assert (sched["beta_start"], sched["beta_end"]) == (0.0015, 0.0195)
    cached = list((tmp_path / "priors").iterdir())
    assert len(cached) == 1 and (cached[0] / "unet" / "config.json").is_file()
    load_prior(FIXTURES / "ldm_label2img", cache_dir=tmp_path)  # second time: from the cache
    assert len(list((tmp_path / "priors").iterdir())) == 1


def test_a_folder_that_is_not_a_prior(tmp_path):
    with pytest.raises(PriorFormatError, match="not a generative prior"):
        load_prior(tmp_path)
    with pytest.raises(PriorFormatError, match="not found"):
        load_prior(tmp_path / "missing")
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(PriorFormatError, match="not a CompVis LDM folder|not a LatentDiffusion config"):
        load_compvis_ldm(tmp_path)


def test_a_prior_config_with_python_tags_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: !!python/object/apply:os.system ['touch /tmp/mindvis-yaml-pwned']\n")
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(PriorFormatError, match="not a plain YAML config") as err:
        load_compvis_ldm(tmp_path)
    assert "\n" not in str(err.value)
    import os

    assert not os.path.exists("/tmp/mindvis-yaml-pwned")
