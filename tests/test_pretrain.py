"""The stage-A engine on the tiny synthetic world: training, artifacts, exact resume, stage A2, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mindvis.config import build_config
from mindvis.configs import preset_path
from mindvis.data.fmri import DataError
from mindvis.models import MaskedBrainModel
from mindvis.pretrain import engine
from mindvis.pretrain.cli import main
from mindvis.pretrain.config import PretrainConfig

from .conftest import FIXTURES, TINY_TRAIN, world_overrides


def make_cfg(cache_dir, out, *extra, preset="synthetic"):
    return build_config(PretrainConfig, preset_path("pretrain", preset),
                        world_overrides(cache_dir) + TINY_TRAIN + [f"output_dir={out}", *extra])


@pytest.fixture(scope="module")
def trained(tiny_world, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = make_cfg(cache_dir, out, "train.epochs=6", "train.checkpoint_every=3", "data.include_god=false")
    summary = engine.pretrain(cfg, run_name="a1")  # resting state only, as the paper's HCP preset
    return out / "a1", summary


def test_training_writes_every_artifact_and_loss_falls(trained):
    run, summary = trained
    for f in ("config.yaml", "train.log", "summary.json", "summary.md", "loss_curve.png",
              "reconstructions/epoch-0003.png", "reconstructions/epoch-0006.png", "model/model.safetensors",
              "checkpoints/latest", "checkpoints/epoch-0006/training_state.pt"):
        assert (run / f).is_file(), f
    state = torch.load(run / "checkpoints/epoch-0006/training_state.pt", weights_only=True)
    history = json.loads(state["history"])
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    assert set(summary["holdout"]) >= {"model", "voxel_mean", "nearest_patch"}
    assert json.loads((run / "summary.json").read_text())["holdout"] == summary["holdout"]
    assert "holdout_mse" in history[2] and "holdout_mse" not in history[1]


def test_saved_model_reloads_to_the_same_numbers(trained):
    run, summary = trained
    m = MaskedBrainModel.from_pretrained(run / "model")
    ckpt = MaskedBrainModel.from_pretrained(run / "checkpoints/epoch-0006/model")
    for k, v in m.state_dict().items():
        assert torch.equal(v, ckpt.state_dict()[k])
    assert engine.load_mbm(run).config == m.config  # a run folder works as --init


def test_resume_repeats_the_uninterrupted_run(tiny_world, cache_dir, tmp_path, monkeypatch, trained):
    run_full, _ = trained
    cfg = make_cfg(cache_dir, tmp_path, "train.epochs=6", "train.checkpoint_every=3", "data.include_god=false")
    real_save = engine._save_checkpoint

    def killed_after_first_checkpoint(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the process dies right after writing epoch 3

    monkeypatch.setattr(engine, "_save_checkpoint", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        engine.pretrain(cfg, run_name="killed")
    monkeypatch.setattr(engine, "_save_checkpoint", real_save)
    assert (tmp_path / "killed/checkpoints/latest").read_text().strip() == "epoch-0003"
    assert main(["--resume", str(tmp_path / "killed")]) == 0
    full = json.loads(torch.load(run_full / "checkpoints/epoch-0006/training_state.pt", weights_only=True)["history"])
    resumed = json.loads(torch.load(tmp_path / "killed/checkpoints/epoch-0006/training_state.pt",
                                    weights_only=True)["history"])
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in full], rtol=1e-6)
    a = MaskedBrainModel.from_pretrained(run_full / "model").state_dict()
    b = MaskedBrainModel.from_pretrained(tmp_path / "killed/model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_god_training_fmri_joins_the_resting_state(tiny_world, cache_dir, tmp_path):
    from mindvis.pretrain.data import _god_for_stage_a1, build_stage_a_data

    rest = make_cfg(cache_dir, tmp_path, "data.include_god=false")
    both = make_cfg(cache_dir, tmp_path)  # the synthetic preset: include_god, the world's GOD subjects
    a = build_stage_a_data(rest.data, 16, 0)
    b = build_stage_a_data(both.data, 16, 0)
    assert (a.num_voxels, b.num_voxels) == (144, 176)  # HCP V1-V4 vs the GOD subject's visual cortex
    n_god_train = 6 * 2  # the tiny world's GOD training trials (6 classes x 2 images; no test fMRI)
    assert len(b.train) + len(b.holdout) == len(a.train) + len(a.holdout) + n_god_train
    real = build_config(PretrainConfig, preset_path("pretrain", "hcp"), ["data.include_god=true", "data.path=x"])
    with pytest.raises(DataError, match="data.include_god needs data.god_path"):
        _god_for_stage_a1(real.data)


def test_stage_a2_voxel_count_must_match_init(trained, cache_dir, tmp_path):
    run, _ = trained
    cfg = make_cfg(cache_dir, tmp_path, f"init={run}", "train.epochs=1", "data.fit_to_init=false",
                   preset="synthetic-god")
    with pytest.raises(DataError, match=r"the data has 176 voxels .* trained on 144"):
        engine.pretrain(cfg, run_name="a2-mismatch")
    cfg = make_cfg(cache_dir, tmp_path, f"init={run}", "train.epochs=1", preset="synthetic-god")
    summary = engine.pretrain(cfg, run_name="a2")
    assert summary["num_voxels"] == 144  # fitted to the checkpoint, as the original A2
    tuned = MaskedBrainModel.from_pretrained(tmp_path / "a2/model")
    assert tuned.config == MaskedBrainModel.from_pretrained(run / "model").config


def test_stage_a2_from_the_original_release_checkpoint(tiny_world, cache_dir, tmp_path):
    cfg = make_cfg(cache_dir, tmp_path, f"init={FIXTURES / 'fmri_encoder.pth'}", "train.epochs=1",
                   preset="synthetic-god")
    summary = engine.pretrain(cfg, run_name="a2-orig")
    assert summary["num_voxels"] == 208
    assert MaskedBrainModel.from_pretrained(tmp_path / "a2-orig/model").config.embed_dim == 64


def test_clear_errors_for_user_mistakes(cache_dir, tmp_path, capsys):
    assert main(["--data", "hcp", "--data-path", str(tmp_path / "missing"), f"output_dir={tmp_path}"]) == 2
    assert "HCP data folder not found" in capsys.readouterr().err
    assert main(["--data", "hcp", f"output_dir={tmp_path}"]) == 2
    assert "data.path is empty" in capsys.readouterr().err
    assert main(["--init", str(tmp_path / "nothing"), f"output_dir={tmp_path}"] + world_overrides(cache_dir)) == 2
    assert "no SC-MBM found" in capsys.readouterr().err


def test_non_finite_loss_stops_the_run(tiny_world, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(MaskedBrainModel, "forward_loss", lambda self, x, pred, mask: (pred * float("nan")).mean())
    args = ["--output-dir", str(tmp_path), "train.epochs=1"] + world_overrides(cache_dir) + TINY_TRAIN
    assert main(args) == 1
    assert "loss is nan at epoch 1, step 1" in capsys.readouterr().err


def test_two_process_run_with_accelerate_launch(tiny_world, cache_dir, tmp_path):
    env = {**os.environ, "MINDVIS_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mindvis.pretrain.cli",
           "--output-dir", str(tmp_path), "--run-name", "ddp", "train.epochs=2", "train.checkpoint_every=2"]
    cmd += world_overrides(cache_dir) + TINY_TRAIN
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpts = sorted(p.name for p in (tmp_path / "ddp/checkpoints").iterdir())
    assert ckpts == ["epoch-0002", "latest"]
    assert json.loads((tmp_path / "ddp/summary.json").read_text())["epochs"] == 2
