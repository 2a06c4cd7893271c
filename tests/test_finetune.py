"""Stage B on the tiny synthetic world: conditioner wiring, trainable parameters, training, errors."""
import json

import pytest
import torch

from mindvis.config import ConfigError, build_config
from mindvis.configs import preset_path
from mindvis.data.fmri import DataError
from mindvis.finetune import engine
from mindvis.finetune.cli import main
from mindvis.finetune.config import FinetuneConfig
from mindvis.models.conditioner import ConditionerConfig, FMRIConditioner
from mindvis.models.dc_ldm import DCLDM
from mindvis.models.sc_mbm import mbm_config

from .conftest import FIXTURES, TINY_FINETUNE, world_overrides


def make_cfg(cache_dir, out, prior, *extra):
    return build_config(FinetuneConfig, preset_path("finetune", "synthetic"),
                        world_overrides(cache_dir) + TINY_FINETUNE + [f"model.prior={prior}", f"output_dir={out}", *extra])


def test_conditioner_shapes():
    enc = mbm_config("tiny", 160).__dict__
    c = FMRIConditioner(ConditionerConfig(encoder=enc, context_dim=32, time_embed_dim=48))
    ctx = c(torch.randn(3, 1, 160))
    assert ctx.shape == (3, 77, 32) and c.time_embedding(ctx).shape == (3, 48)
    pooled = FMRIConditioner(ConditionerConfig(encoder=enc, context_dim=32, time_embed_dim=48, global_pool=True))
    ctx = pooled(torch.randn(3, 1, 160))
    assert ctx.shape == (3, 1, 32) and pooled.time_embedding(ctx).shape == (3, 48)
    off = FMRIConditioner(ConditionerConfig(encoder=enc, context_dim=32, time_embed_dim=48, use_time_cond=False))
    assert off.time_embedding(off(torch.randn(1, 1, 160))) is None


def _model(cache_dir, tmp_path, prior, *extra):
    cfg = make_cfg(cache_dir, tmp_path, prior, *extra)
    return engine.build_model(cfg, 176, *engine.load_encoder(cfg.model.encoder, cfg.model.encoder_variant))


def test_time_conditioning_reaches_the_timestep_embedding(cache_dir, tmp_path, tiny_prior):
    m = _model(cache_dir, tmp_path, tiny_prior).eval()
    z = torch.randn(2, 3, 4, 4)
    t = torch.tensor([10, 500])
    f1, f2 = torch.randn(2, 1, 176), torch.randn(2, 1, 176)
    c1, e1 = m.condition(f1)
    _, e2 = m.condition(f2)
    assert not torch.allclose(e1, e2)  # another fMRI, another offset of the timestep embedding
    with torch.no_grad():
        a = m.predict_noise(z, t, c1, e1)
        b = m.predict_noise(z, t, c1, e2)  # same cross-attention context, different time offset
    assert not torch.allclose(a, b)


def test_only_the_intended_parameters_get_gradients(cache_dir, tmp_path, tiny_prior):
    m = _model(cache_dir, tmp_path, tiny_prior)
    names = set(m.set_trainable("cross_attention", encoder=True))
    loss = m(torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 1, 176))
    loss.backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= names
    unet = {n for n in names if n.startswith("unet.")}
    assert unet and all(".attn2." in n or ".norm2." in n for n in unet)
    assert not any(".resnets." in n for n in unet) and not any(n.startswith("vae.") for n in names)
    assert any(n.startswith("conditioner.mae.") for n in with_grad)
    assert any(n.startswith("conditioner.time_mapper.") for n in with_grad)
    frozen_enc = set(m.set_trainable("cross_attention", encoder=False))
    assert not any(n.startswith("conditioner.mae.") for n in frozen_enc)
    assert any(n.startswith("unet.conv_in") for n in m.set_trainable("all"))


def test_finetune_run_writes_checkpoints_grids_and_selects_on_validation(cache_dir, tmp_path, tiny_prior):
    cfg = make_cfg(cache_dir, tmp_path, tiny_prior, "train.epochs=4", "train.lr=3e-3", "train.select_metric=val_loss")
    data = engine.build_stage_b_data(cfg.data, 16, cfg.train.seed)
    model = engine.build_model(cfg, data.num_voxels, *engine.load_encoder(cfg.model.encoder, cfg.model.encoder_variant))
    before = engine.evaluate_loss(model, data.train, 16, 0, 8, "cpu")["loss"]
    summary = engine.finetune(cfg, run_name="b")
    run = tmp_path / "b"
    for f in ("config.yaml", "train.log", "summary.json", "loss_curve.png", "test_grid.png",
              "validation/epoch-0002.png", "validation/epoch-0004.png", "best/conditioner/model.safetensors",
              "model/unet/config.json", "checkpoints/latest", "checkpoints/epoch-0004/training_state.pt"):
        assert (run / f).exists(), f
    assert summary["select_metric"] == "val_loss" and summary["selected_epoch"] in (2, 4)
    history = json.loads((run / "summary.json").read_text())
    assert history["selected_value"] > 0
    assert "loss_synthetic" not in summary["test"] and "loss_god" in summary["test"]
    after = engine.evaluate_loss(DCLDM.from_pretrained(run / "model"), data.train, 16, 0, 8, "cpu")["loss"]
    assert after < before  # the same noise and timesteps: the fitted model predicts them better
    again = DCLDM.from_pretrained(run / "best")
    assert again.conditioner.config.context_dim == 32


def test_resume_repeats_the_uninterrupted_run(cache_dir, tmp_path, tiny_prior, monkeypatch):
    full = engine.finetune(make_cfg(cache_dir, tmp_path, tiny_prior, "train.epochs=4"), run_name="full")
    real = engine.write_checkpoint

    def die_after_first(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_checkpoint", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        engine.finetune(make_cfg(cache_dir, tmp_path, tiny_prior, "train.epochs=4"), run_name="killed")
    monkeypatch.setattr(engine, "write_checkpoint", real)
    assert main(["--resume", str(tmp_path / "killed")]) == 0
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert resumed["last_loss"] == pytest.approx(full["last_loss"], rel=1e-5)
    assert resumed["test"]["loss"] == pytest.approx(full["test"]["loss"], rel=1e-5)


def test_stage_a_encoder_with_other_voxel_count(cache_dir, tmp_path, tiny_prior):
    cfg = make_cfg(cache_dir, tmp_path, tiny_prior, f"model.encoder={FIXTURES / 'fmri_encoder.pth'}")
    enc_cfg, weights = engine.load_encoder(cfg.model.encoder, cfg.model.encoder_variant)
    assert enc_cfg.num_voxels == 208 and weights is not None
    m = engine.build_model(cfg, 176, enc_cfg, weights)  # positions interpolated 13 -> 11 patches
    assert m.conditioner.mae.pos_embed.shape[1] == 12
    cfg.model.interpolate_positions = False
    with pytest.raises(DataError, match="the data has 176 voxels but the encoder was trained on 208"):
        engine.build_model(cfg, 176, enc_cfg, weights)
    with pytest.raises(DataError, match="cannot take 170 voxels"):
        engine.build_model(cfg, 170, enc_cfg, weights)


def test_selection_on_validation_identification(cache_dir, tmp_path, tiny_prior):
    cfg = make_cfg(cache_dir, tmp_path, tiny_prior, "train.epochs=2", "train.select_metric=val_pcc_identification")
    summary = engine.finetune(cfg, run_name="pcc")
    assert summary["select_metric"] == "val_pcc_identification" and 0 <= summary["selected_value"] <= 1
    cfg = make_cfg(cache_dir, tmp_path, tiny_prior, "train.select_metric=test_loss")
    with pytest.raises(ConfigError, match="train.select_metric='test_loss' is not allowed"):
        engine.finetune(cfg, run_name="bad")


def test_prior_draws_its_own_classes(tiny_prior, tmp_path):
    from mindvis.finetune.prior import sample_classes

    a = sample_classes(tiny_prior, [0, 1, 2], num_samples=2, steps=3, seed=1)
    assert a.shape == (3, 2, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, sample_classes(tiny_prior, [0, 1, 2], num_samples=2, steps=3, seed=1, batch_size=4))
    n_classes = json.loads((tiny_prior / "class_embedder" / "config.json").read_text())["num_classes"]
    with pytest.raises(ValueError, match="class ids must lie in"):
        sample_classes(tiny_prior, [n_classes])  # the null class is not a class
    with pytest.raises(FileNotFoundError, match="not a class-conditional prior"):
        sample_classes(tmp_path, [0])


def test_cli_errors(cache_dir, tmp_path, tiny_prior, capsys):
    assert main(["--dataset", "god", "--encoder", "random", "--prior", str(tiny_prior),
                 "--output-dir", str(tmp_path)]) == 2
    assert "data.path is empty" in capsys.readouterr().err
    assert main(["--dataset", "synthetic", "--output-dir", str(tmp_path)] + world_overrides(cache_dir)) == 2
    assert "model.encoder is empty" in capsys.readouterr().err
    assert main(["--dataset", "synthetic", "--encoder", "random", "--prior", str(tmp_path), "--output-dir",
                 str(tmp_path)] + world_overrides(cache_dir)) == 2
    assert "is not a generative prior" in capsys.readouterr().err
    assert main(["--dataset", "god", "--data-path", str(tmp_path / "none"), "--encoder", "random", "--prior",
                 str(tiny_prior), "--output-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_presets_load_and_derived_defaults_follow_overrides():
    from mindvis.finetune.cli import build_parser, resolve_config

    p = build_parser()
    assert resolve_config(p.parse_args(["--dataset", "bold5000"])).train.batch_size == 25
    assert resolve_config(p.parse_args(["--dataset", "god"])).train.batch_size == 5
    assert list(resolve_config(p.parse_args(["--dataset", "god"])).data.subjects) == ["sbj_3"]
    assert list(resolve_config(p.parse_args(["--dataset", "synthetic"])).data.subjects) == []  # every subject
    cfg = resolve_config(p.parse_args(["--dataset", "god", "train.batch_size=7", "model.time_cond=false"]))
    assert cfg.train.batch_size == 7 and cfg.model.time_cond is False
    cfg = resolve_config(p.parse_args(["--dataset", "bold5000", "--encoder", "enc.pth"]))
    assert cfg.model.encoder == "enc.pth"  # the BOLD5000 run gets the encoder it is given, not GOD's


@pytest.mark.slow
def test_paper_size_stage_b_runs_a_training_step_on_cpu():
    """label2img-sized UNet + VQ-f4 (random weights), paper SC-MBM on 4,656 voxels, 256 px, batch 5 (~1 min, ~10 GiB)."""
    from mindvis.models.priors import label2img_architecture

    unet, vae, sched = label2img_architecture()
    enc = mbm_config("paper", 4656)
    cond = FMRIConditioner(ConditionerConfig(encoder=enc.__dict__, context_dim=512,
                                             time_embed_dim=unet.time_embedding.linear_2.out_features))
    m = DCLDM(unet, vae, cond, sched)
    params = [p for n, p in m.named_parameters() if n in set(m.set_trainable())]
    opt = torch.optim.AdamW(params, lr=5.3e-5)
    loss = m(torch.rand(5, 3, 256, 256) * 2 - 1, torch.randn(5, 1, 4656))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and m.image_size == 256


def test_original_norm_filter_setting_reaches_the_encoder(cache_dir, tmp_path, tiny_prior):
    from mindvis.models.sc_mbm import MaskedBrainModel

    mbm = MaskedBrainModel(mbm_config("tiny", 176))
    with torch.no_grad():
        mbm.norm.weight.add_(1.0)
    mbm.save_pretrained(tmp_path / "a")
    for flag, expect_trained in (("false", True), ("true", False)):
        cfg = make_cfg(cache_dir, tmp_path, tiny_prior, f"model.encoder={tmp_path / 'a'}", "model.global_pool=true",
                       f"model.original_norm_filter={flag}")
        m = engine.build_model(cfg, 176, *engine.load_encoder(cfg.model.encoder, cfg.model.encoder_variant))
        assert torch.equal(m.conditioner.mae.norm.weight, mbm.norm.weight) == expect_trained
