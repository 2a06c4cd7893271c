"""mindvis-distill on a tiny DC-LDM: the student approaches the teacher in few steps, resume is exact, the student
reloads identical and samples with mindvis-sample, bad settings are one-line errors."""
import json

import pytest
import torch

from mindvis.config import ConfigError, build_config, save_config, to_plain
from mindvis.configs import preset_path
from mindvis.finetune import distill as D
from mindvis.finetune.distill_data import Run
from mindvis.finetune.distill_lcd import SkippingStepSolver, boundary_scalings, consistency_loss, predicted_x0
from mindvis.finetune import engine
from mindvis.finetune.config import DistillConfig, FinetuneConfig
from mindvis.models.dc_ldm import DCLDM
from mindvis.pipelines import MindVisPipeline

from .test_finetune import make_cfg

#: a short distillation of the tiny teacher: 10 solver steps without guidance, no validation grid until the end
TINY_DISTILL = ["distill.solver_steps=10", "distill.guidance=1", "train.batch_size=4", "train.lr=1e-3", "train.grid_samples=2",
                "train.num_samples=1", "train.sample_steps=2", "train.val_every=100", "train.checkpoint_every=2",
                "train.select_metric=last"]


@pytest.fixture(scope="module")
def teacher(cache_dir, tiny_world, tmp_path_factory):
    """A tiny DC-LDM teacher saved as a stage-B run folder (config.yaml + best/): a UNet with (16, 32) channels (so
    that its group norms keep the timestep), a random encoder, trained for 100 steps on the tiny world's pairs
    with a Stable-Diffusion-like schedule (alpha_bar_T 0.0047: its ODE stays bounded after so little training)."""
    from mindvis.data.pairs import PairedDataset
    from mindvis.world import SyntheticWorldConfig
    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import train_prior

    from .conftest import TINY_WORLD

    root = tmp_path_factory.mktemp("teacher")
    prior = train_prior(PriorConfig(image_size=16, images_per_class=1, vq_channels=[16, 16, 16], unet_channels=[16, 32],
                                    context_dim=32, vq_epochs=1, ldm_epochs=1, batch_size=8,
                                    synthetic=SyntheticWorldConfig(**TINY_WORLD)), root / "prior")
    cfg = make_cfg(cache_dir, root, prior)
    torch.manual_seed(0)
    m = engine.build_model(cfg, 176, *engine.load_encoder(cfg.model.encoder, cfg.model.encoder_variant))
    m = DCLDM(m.unet, m.vae, m.conditioner, dict(m.scheduler_config, beta_start=0.00085, beta_end=0.012))
    data = engine.build_stage_b_data(cfg.data, 16, 0)
    ds = PairedDataset(data.train, 16)
    imgs, fmri = torch.stack([ds[i]["image"] for i in range(len(ds))]), torch.stack([ds[i]["fmri"] for i in range(len(ds))])
    m.set_trainable("all")
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss = m.loss(imgs, fmri, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    run = root / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    m.requires_grad_(False).save_pretrained(run / "best")
    return run


def dcfg(teacher, out, *extra):
    defaults = {"data": to_plain(build_config(FinetuneConfig, teacher / "config.yaml").data)}
    return build_config(DistillConfig, preset_path("distill", "synthetic"),
                        [f"teacher={teacher}", f"output_dir={out}", *TINY_DISTILL, *extra], defaults=defaults)


@torch.no_grad()
def _chain(run: Run, clean, latents, steps: int, cond):
    """LCM's multistep sampling with ``clean(x, t, index)`` as the map to a clean latent, the same noise between steps
    for every map (one generator per sample)."""
    from mindvis.pipelines.mindvis_pipeline import make_scheduler, sample_generators

    sched = make_scheduler("lcm", run.teacher.scheduler_config, run.sampler_config)
    sched.set_timesteps(steps)
    ac = run.lcd.alphas_cumprod
    gens = sample_generators(0, 0, len(latents))
    x = latents
    for i, t in enumerate(sched.timesteps):
        x0 = clean(x, t, int((t + 1) // run.lcd.solver.k) - 1)
        if i + 1 < len(sched.timesteps):
            a = ac[sched.timesteps[i + 1]]
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
            x = a.sqrt() * x0 + (1 - a).sqrt() * noise
        else:
            x = x0
    return x


def _distances(run: Run, unets: dict, n: int = 8) -> dict:
    """Mean squared distance (scaled latents) of 1-, 2- and 4-step consistency sampling with each UNet to the same
    chain run with the teacher's many-step ODE solution (its DDIM over the remaining solver steps) at every step."""
    fmri = torch.from_numpy(run.train_ds.split.fmri[:n]).float()[:, None]
    cond = run.teacher.condition(fmri)
    ac = run.lcd.alphas_cumprod
    latents = torch.randn((n, 3, 4, 4), generator=torch.Generator().manual_seed(123))

    def teacher_ode(x, t, index):
        for j in reversed(range(index + 1)):
            tj = run.lcd.solver.timesteps[j].repeat(len(x))
            eps = run.teacher.eps(run.teacher.unet, x, tj, cond)
            x = run.lcd.solver.ddim_step(predicted_x0(eps, x, tj, ac), eps, torch.full((len(x),), j))
        return x

    def student(unet):
        def clean(x, t, index):
            tt = t.repeat(len(x))
            c_skip, c_out = (v.view(-1, 1, 1, 1) for v in boundary_scalings(tt))
            return c_skip * x + c_out * predicted_x0(run.teacher.eps(unet, x, tt, cond), x, tt, ac)
        return clean

    out = {}
    for steps in (1, 2, 4):
        ref = _chain(run, teacher_ode, latents, steps, cond)
        out[steps] = {name: float(((_chain(run, student(u), latents, steps, cond) - ref) ** 2).mean())
                      for name, u in unets.items()}
    return out


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    """A short distillation of the tiny teacher from the command line (the teacher run's data settings)."""
    out = tmp_path_factory.mktemp("distilled")
    assert D.main(["--teacher", str(teacher), "--out", str(out), "--run-name", "s", *TINY_DISTILL,
                   "train.epochs=30"]) == 0
    return out / "s"


def test_student_approaches_the_teachers_samples(teacher, distilled):
    run = Run(dcfg(teacher, distilled.parent))
    student = DCLDM.from_pretrained(distilled / "best").unet.eval()
    dist = _distances(run, {"undistilled": run.teacher.unet, "student": student})
    for steps, d in dist.items():
        # one step maps the starting noise straight to the teacher's ODE solution; with more steps LCM adds fresh
        # noise between them, which both chains share but which leaves less for the student to win
        assert d["student"] < (0.7 if steps < 4 else 0.9) * d["undistilled"], dist
    summary = _summary(distilled)
    assert summary["last_loss"] < summary["first_loss"] and summary["undistilled_validation"]["val_loss"] > 0


def test_resume_is_exact_and_the_student_reloads_identical(teacher, tmp_path, monkeypatch):
    full = D.distill(dcfg(teacher, tmp_path, "train.epochs=4", "train.val_every=2"), run_name="full")
    real = D.write_checkpoint

    def die_after_first(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "write_checkpoint", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        D.distill(dcfg(teacher, tmp_path, "train.epochs=4", "train.val_every=2"), run_name="killed")
    monkeypatch.setattr(D, "write_checkpoint", real)
    assert D.main(["--resume", str(tmp_path / "killed")]) == 0
    losses = [h["loss"] for h in _history(tmp_path / "full")]
    assert len(losses) == 4 and losses == [h["loss"] for h in _history(tmp_path / "killed")]  # the same, exactly
    assert full["last_validation"]["val_loss"] == _summary(tmp_path / "killed")["last_validation"]["val_loss"]

    a = DCLDM.from_pretrained(tmp_path / "full" / "model")
    b = DCLDM.from_pretrained(tmp_path / "killed" / "model")
    assert a.sampler_config["original_inference_steps"] == 10 and a.sampler_config["guidance"] == 1.0
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # the saved student reloads identical and samples as before
    fmri = torch.randn(2, 176, generator=torch.Generator().manual_seed(0))
    pipe = MindVisPipeline(a)
    x = pipe(fmri, num_samples=2, seed=3)  # default for a student: LCM at its default steps
    a.save_pretrained(tmp_path / "again")
    y = MindVisPipeline.from_pretrained(tmp_path / "again")(fmri, num_samples=2, seed=3)
    assert torch.equal(x, y)
    # independent of the batch size (per-sample generators for LCM's noise between steps)
    z = pipe(fmri, num_samples=2, seed=3, num_inference_steps=4, batch_size=3)
    w = pipe(fmri, num_samples=2, seed=3, num_inference_steps=4, batch_size=4)
    assert torch.allclose(z, w, atol=1e-6)


def _history(run):
    state = torch.load(run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() /
                       "training_state.pt", weights_only=True)
    return json.loads(state["history"])


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def test_the_command_line_run_and_sampling(teacher, distilled, tmp_path):
    from mindvis.pipelines.sample_cli import main as sample_main

    # the data settings and the split's seed came from the teacher run's config.yaml
    cfg = build_config(DistillConfig, distilled / "config.yaml")
    teacher_cfg = build_config(FinetuneConfig, teacher / "config.yaml")
    assert cfg.data == teacher_cfg.data and cfg.data_seed == teacher_cfg.train.seed
    for f in ("train.log", "summary.json", "loss_curve.png", "undistilled.json", "best/sampler/scheduler_config.json",
              "model/mindvis_dcldm.json"):
        assert (distilled / f).is_file(), f
    for steps in ("1", "2", "4"):
        out = tmp_path / f"samples{steps}"
        assert sample_main(["--model", str(distilled), "--steps", steps, "--num-samples", "1",
                            "--precision", "fp32", "--out", str(out)]) == 0
        meta = json.loads((out / "sample_config.json").read_text())
        assert meta["scheduler"] == "lcm" and meta["steps"] == int(steps) and meta["split"] == "test"


def test_bad_settings_are_one_line_errors(teacher, tmp_path, capsys):
    from mindvis.pipelines.sample_cli import main as sample_main

    for bad, said in [("distill.guidance=0.5", "distill.guidance=0.5 is not allowed"),
                      ("distill.loss=l1", "distill.loss='l1' is not allowed"),
                      ("distill.uncond=noise", "distill.uncond='noise' is not allowed"),
                      ("train.sample_steps=60", "train.sample_steps=60 is not allowed"),
                      ("distill.solverr_steps=3", "distill.solverr_steps")]:
        assert D.main(["--teacher", str(teacher), "--out", str(tmp_path), bad]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
    assert D.main(["--teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err
    # lcm on a model that was not distilled; too many steps for a student
    assert sample_main(["--model", str(teacher), "--scheduler", "lcm", "--out", str(tmp_path / "x")]) == 2
    assert "not distilled" in capsys.readouterr().err


def test_consistency_pieces():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[1] < 1e-6 and c_out[1] == pytest.approx(1, abs=1e-6)
    ac = torch.linspace(0.999, 0.01, 1000)
    s = SkippingStepSolver(ac, 50)
    assert s.k == 20 and s.timesteps[0] == 19 and s.timesteps[-1] == 999
    assert s.prev_alphas_cumprod[0] == ac[0] and s.prev_alphas_cumprod[1] == ac[19]
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    idx = torch.tensor([0, 5])
    # a DDIM step of the exact (x0, eps) lands on the forward process at the earlier timestep
    out = s.ddim_step(x0, eps, idx)
    a = ac[s.timesteps[idx - 1].clamp(min=0)]
    a[0] = ac[0]
    assert torch.allclose(out, a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps)
    assert consistency_loss(x0, x0, "huber", 1e-3) == 0 and consistency_loss(x0, x0 + 1, "l2", 1e-3) == 1


def test_the_embedding_generator_distils_with_the_same_code(tiny_world, cache_dir, tmp_path):
    from mindvis.world import SyntheticWorldConfig
    from mindvis.finetune.config import PriorConfig
    from mindvis.finetune.prior import train_prior
    from mindvis.pipelines.embedding_pipeline import EmbeddingToImagePipeline

    from .conftest import TINY_WORLD

    gen = train_prior(PriorConfig(image_size=16, images_per_class=2, vq_channels=[16, 16, 16], unet_channels=[16, 32],
                                  context_dim=32, vq_epochs=1, ldm_epochs=1, batch_size=8, condition="embedding",
                                  target="synthetic", synthetic=SyntheticWorldConfig(**TINY_WORLD)), tmp_path / "gen")
    assert D.main(["--teacher", str(gen), "--out", str(tmp_path), "--run-name", "s", f"data.cache_dir={cache_dir}",
                   *TINY_DISTILL, "distill.guidance=1.5", "train.epochs=1"]) == 0
    summary = _summary(tmp_path / "s")
    assert summary["kind"] == "generator" and summary["guidance"] == 1.5
    student = EmbeddingToImagePipeline.from_pretrained(tmp_path / "s" / "best")
    assert student.sampler_config["original_inference_steps"] == 10 and student.sampler_config["uncond"] == "null_token"
    emb = torch.randn(3, student.conditioner.config.embed_dim, generator=torch.Generator().manual_seed(0))
    a = student(emb, num_samples=2, seed=1)  # LCM at the default steps
    assert a.shape == (3, 2, 3, 16, 16) and torch.equal(a, student(emb, num_samples=2, seed=1, num_inference_steps=4))
