"""Reduced-precision sampling and the few-step solvers: every scheduler honours --precision, and bf16 samples stay
close to fp32 ones."""
import json

import pytest
import torch

from mindvis.finetune import engine
from mindvis.models.dc_ldm import DCLDM
from mindvis.pipelines import MindVisPipeline
from mindvis.pipelines.mindvis_pipeline import SCHEDULERS, cpu_has_bf16, resolve_precision

from .test_finetune import make_cfg

#: bf16 keeps 8 bits of mantissa: through a few denoising steps of a random tiny UNet the images (in [0, 1]) move by
#: well under a thousandth on average; a broken cast (e.g. the solver in bf16, or the decoder) moves them by far more.
MEAN_TOL, MAX_TOL = 0.003, 0.05


@pytest.fixture(scope="module")
def pipe(cache_dir, tmp_path_factory, tiny_prior):
    cfg = make_cfg(cache_dir, tmp_path_factory.mktemp("prec"), tiny_prior)
    torch.manual_seed(0)
    return MindVisPipeline(engine.build_model(cfg, 176, *engine.load_encoder(cfg.model.encoder, cfg.model.encoder_variant)).eval())


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_bf16_samples_equal_fp32_samples_within_tolerance(pipe, scheduler):
    fmri = torch.randn(3, 176, generator=torch.Generator().manual_seed(1))
    if scheduler == "lcm":  # LCM sampling needs a student's settings; the arithmetic is the same for any UNet
        m = pipe.model
        pipe = MindVisPipeline(DCLDM(m.unet, m.vae, m.conditioner, m.scheduler_config, {"original_inference_steps": 50}))
    a = pipe(fmri, num_samples=2, num_inference_steps=4, scheduler=scheduler, seed=0)
    b = pipe(fmri, num_samples=2, num_inference_steps=4, scheduler=scheduler, seed=0, precision="bf16")
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    diff = (a - b).abs()
    assert not torch.equal(a, b)  # the flag changed the arithmetic ...
    assert diff.mean() < MEAN_TOL and diff.max() < MAX_TOL  # ... and only by rounding


def test_fp16_runs_and_precision_names():
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_few_step_solvers_are_the_named_diffusers_schedulers():
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from mindvis.models.priors import LDM_SCHEDULE
    from mindvis.pipelines.mindvis_pipeline import make_scheduler

    plain, karras, unipc = (make_scheduler(n, LDM_SCHEDULE) for n in ("dpm++", "dpm++karras", "unipc"))
    assert isinstance(plain, DPMSolverMultistepScheduler) and isinstance(unipc, UniPCMultistepScheduler)
    assert plain.config.algorithm_type == "dpmsolver++" and plain.config.solver_order == 2
    assert karras.config.use_karras_sigmas and not plain.config.use_karras_sigmas
    for s in (plain, karras, unipc):
        s.set_timesteps(5)
        assert s.config.beta_schedule == "scaled_linear" and len(s.timesteps) == 5
    assert not torch.equal(plain.timesteps, karras.timesteps)  # Karras spacing crowds the low-noise end


def test_auto_precision_is_measured_per_stage_and_cached(pipe, monkeypatch, cache_dir):
    """``auto`` times each stage in each type the machine offers and keeps the faster one (fp32 unless another type
    saves 5 %); the decision is cached per machine and model size, so a second call measures nothing."""
    from mindvis.pipelines import precision as P

    calls = []
    fake = {("unet", "bf16"): 0.5, ("condition", "bf16"): 0.98, ("decode", "bf16"): 1.5}  # seconds; fp32 takes 1.0

    def time_stage(stage, name, fn, repeats, timer):
        calls.append((stage, name))
        fn()  # the stage really runs in that type
        return fake.get((stage, name), 1.0)

    monkeypatch.setattr(P, "candidates", lambda device: ["fp32", "bf16"])
    monkeypatch.setattr(P, "time_stage", time_stage)
    P.probe_file().unlink(missing_ok=True)
    fmri = torch.randn(3, 176, generator=torch.Generator().manual_seed(1))
    timings = {}
    a = pipe(fmri, num_samples=2, num_inference_steps=2, scheduler="ddim", precision="auto", timings=timings)
    assert timings["precision"] == {"condition": "fp32", "unet": "bf16", "decode": "fp32"}  # 2 % is not worth it
    assert sorted(calls) == sorted((s, n) for s in P.STAGES for n in ("fp32", "bf16"))
    cached = json.loads(P.probe_file().read_text())
    (entry,) = cached.values()
    assert entry["decision"] == timings["precision"] and entry["seconds"]["unet"]["bf16"] == 0.5
    # the decision is used: the same images as an explicit per-stage run (UNet in bf16 only)
    b = pipe(fmri, num_samples=2, num_inference_steps=2, scheduler="ddim", precision="bf16")
    c = pipe(fmri, num_samples=2, num_inference_steps=2, scheduler="ddim", precision="fp32")
    assert not torch.equal(a, c) and not torch.equal(a, b)
    # cached: nothing is timed again, the same decision comes back
    calls.clear()
    timings = {}
    again = pipe(fmri, num_samples=2, num_inference_steps=2, scheduler="ddim", precision="auto", timings=timings)
    assert calls == [] and timings["precision"]["unet"] == "bf16" and torch.equal(again, a)
    # another batch size is another model size: measured anew
    pipe(fmri, num_samples=2, num_inference_steps=2, scheduler="ddim", precision="auto", batch_size=2)
    assert calls and len(json.loads(P.probe_file().read_text())) == 2


def test_reduced_precision_decoding_keeps_the_codebook_lookup_in_fp32(pipe):
    m = pipe.model
    z = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    a, b = m.decode_latents(z), m.decode_latents(z, torch.bfloat16)
    assert a.dtype == b.dtype == torch.float32
    assert 0 < (a - b).abs().mean() < MEAN_TOL * 3
