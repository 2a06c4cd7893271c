"""The MindEye recipes of mindvis-align (configs/align/mindeye{1,2}*.yaml, align/mindeye*.py), and released
checkpoints (the reference-generated fixtures) converted into run folders that mindvis-align --score reads."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mindvis.align.cli import main as align_main
from mindvis.align.config import AlignConfig
from mindvis.config import build_config
from mindvis.configs import preset_path

from .conftest import TINY_WORLD

FIX = Path(__file__).parent / "fixtures"
#: 40 voxels per subject: the reference fixtures' input size (tests/fixtures/mindeye{1,2})
NSD_WORLD = {**TINY_WORLD, "nsd_subjects": 2, "nsd_sessions": 1, "nsd_shared": 10, "nsd_volume": [8, 8, 8],
             "nsd_voxels": [8, 8, 6, 6, 4, 4, 4]}
#: the synthetic recipes narrowed further, for seconds
TINY = ["mindeye.hidden=32", "mindeye.blocks=1", "mindeye.projector_hidden=16", "mindeye.prior_depth=1",
        "mindeye.prior_timesteps=10", "mindeye.prior_sample_steps=0", "train.batch_size=16", "train.epochs=3",
        "train.lr=1e-3", "data.max_train=64", "eval.show=2", "eval.mindeye_subset=5", "eval.mindeye_draws=2"]
TINY_BLURRY = ["mindeye.blurry_channels=8", "mindeye.blurry_decoder_channels=[8,8,8]", "mindeye.blurry_norm_groups=4",
               "mindeye.blurry_maps_hidden=16"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


# --------------------------------------------------------------------------------------------- the presets

#: every setting of the reference recipes, as their training code sets it (each preset in configs/align/ cites the lines):
#: Train_MindEye.py (MindEye1) and Train.ipynb (MindEye2)
REFERENCE = {
    "mindeye1": {"decoder.name": "mindeye1", "train.epochs": 240, "train.batch_size": 32, "train.lr": 3e-4,
                 "train.weight_decay": 0.01, "train.clip_grad": 0.0, "train.seed": 42, "train.mixed_precision": "fp16",
                 "loss.contrastive": "mindeye", "loss.bimixco_temperature": 0.006, "loss.mixup_fraction": 0.33,
                 "loss.mix_beta": 0.15, "loss.mix_p": 0.5, "mindeye.hidden": 4096, "mindeye.blocks": 4,
                 "mindeye.projector_hidden": 2048, "mindeye.input_dropout": 0.5, "mindeye.block_dropout": 0.15,
                 "mindeye.prior": True, "mindeye.prior_depth": 6, "mindeye.prior_dim_head": 64,
                 "mindeye.prior_timesteps": 100, "mindeye.prior_cond_drop": 0.2, "mindeye.prior_sample_steps": 100,
                 "mindeye.clip_scale": 1.0, "mindeye.prior_scale": 30.0, "mindeye.softclip_start": 0.004,
                 "mindeye.softclip_end": 0.0075, "mindeye.onecycle_warmup_epochs": 2.0,
                 "mindeye.final_div_factor": 1000.0, "mindeye.repetitions": "cycle", "mindeye.test_average": "fmri",
                 "mindeye.image_augment": True,
                 "mindeye.select": "last", "data.val_fraction": 0.0,
                 "target": "clip-vit-l-14-tokens:openai/clip-vit-large-patch14"},
    "mindeye2": {"decoder.name": "mindeye2", "train.epochs": 150, "train.batch_size": 24, "train.lr": 3e-4,
                 "train.weight_decay": 0.01, "train.clip_grad": 0.0, "train.seed": 42, "train.mixed_precision": "fp16",
                 "loss.contrastive": "mindeye", "loss.bimixco_temperature": 0.006, "loss.mixup_fraction": 0.33,
                 "loss.mix_beta": 0.15, "loss.mix_p": 0.5, "mindeye.hidden": 4096, "mindeye.blocks": 4,
                 "mindeye.block_dropout": 0.15, "mindeye.prior_depth": 6, "mindeye.prior_dim_head": 52,
                 "mindeye.prior_timesteps": 100, "mindeye.prior_cond_drop": 0.2, "mindeye.prior_embed_scale": 0.0,
                 "mindeye.prior_sample_steps": 20, "mindeye.clip_scale": 1.0, "mindeye.prior_scale": 30.0,
                 "mindeye.blur_scale": 0.5, "mindeye.blurry_contrastive_weight": 0.1,
                 "mindeye.blurry_temperature": 0.2, "mindeye.softclip_start": 0.004, "mindeye.softclip_end": 0.0075,
                 "mindeye.onecycle_warmup_epochs": 2.0, "mindeye.final_div_factor": 1000.0,
                 "mindeye.test_average": "outputs", "mindeye.select": "last", "mindeye.finetune": "full",
                 "mindeye.image_augment": False,
                 "mindeye.reference_bug": False, "mindeye.blurry": True, "mindeye.blurry_side": 7,
                 "mindeye.blurry_channels": 64, "mindeye.blurry_decoder_channels": [32, 64, 128],
                 "mindeye.blurry_maps_dim": 512, "mindeye.blurry_image_size": 224, "data.val_fraction": 0.0,
                 "target": "openclip-bigg-14-tokens:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"},
}


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if hasattr(cfg, "__len__") and not isinstance(cfg, str) else cfg


@pytest.mark.parametrize("recipe", ["mindeye1", "mindeye2"])
def test_presets_hold_the_reference_settings(recipe):
    cfg = build_config(AlignConfig, preset_path("align", recipe))
    wrong = {k: (_get(cfg, k), v) for k, v in REFERENCE[recipe].items() if _get(cfg, k) != v}
    assert not wrong, wrong
    # the synthetic variants keep the recipe and narrow only sizes, epochs, fp32 and the target space
    narrow = build_config(AlignConfig, preset_path("align", f"{recipe}-synthetic"))
    kept = [k for k in REFERENCE[recipe] if not k.startswith(("mindeye.hidden", "mindeye.blocks", "mindeye.prior_depth",
                                                               "mindeye.prior_dim_head", "mindeye.projector_hidden",
                                                               "mindeye.blurry_", "mindeye.prior_embed_scale",
                                                               "train.epochs", "train.mixed_precision", "target"))]
    changed = {k: (_get(narrow, k), _get(cfg, k)) for k in kept if _get(narrow, k) != _get(cfg, k)}
    assert not changed, changed


def test_onecycle_and_groups_are_the_references():
    from mindvis.align.mindeye_models import build_network, onecycle, optimizer_groups, prior_config
    from mindvis.models.mindeye_prior import MindEyePrior

    cfg = build_config(AlignConfig, preset_path("align", "mindeye1"), ["mindeye.hidden=8", "mindeye.blocks=1",
                                                                       "mindeye.projector_hidden=8"])
    net = build_network(cfg.mindeye, "mindeye1", [10], 3, 8)
    prior = MindEyePrior(prior_config(cfg.mindeye, "mindeye1", 3, 8))
    groups = optimizer_groups("mindeye1", net, prior, 0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]  # prior, then voxel2clip (the reference order)
    names = {id(p): n for n, p in list(net.named_parameters()) + list(prior.net.named_parameters())}
    assert all("bias" in names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"])
    assert names[id(net.input[1].weight)] and any(p is net.input[1].weight for p in groups[2]["params"])  # LN decayed
    opt = torch.optim.AdamW(groups, lr=3e-4)
    sched = onecycle(opt, cfg.mindeye, 3e-4, 240, 276)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, 3e-4, total_steps=240 * 276, final_div_factor=1000,
                                              pct_start=2 / 240)
    for _ in range(700):
        assert sched.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-12)
        assert opt.param_groups[0]["betas"] == pytest.approx(ref_opt.param_groups[0]["betas"])  # beta1 cycled
        opt.step(), ref_opt.step(), sched.step(), ref.step()
    assert cfg.train.clip_grad == 0


def test_recipe_flag_picks_the_preset(capsys):
    assert align_main(["--recipe", "mindeye2", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "name: mindeye2" in out and "prior_dim_head: 52" in out
    assert align_main(["--recipe", "mindeye1", "--config", "nsd", "--print-config"]) == 2
    assert "give one of them" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- batches, averaging


def test_multi_subject_batches_hold_an_equal_share():
    from mindvis.align.mindeye_batches import SubjectTrials, multi_subject_batches

    subjects = []
    for n_img, v in ((30, 5), (45, 7), (20, 4)):
        img = np.repeat(np.arange(n_img), 3)
        subjects.append(SubjectTrials(f"s{v}", np.zeros((len(img), v), np.float32), img,
                                      np.zeros((n_img, 2, 3), np.float32), np.zeros((n_img, 4, 4, 3), np.uint8)))
    plan = multi_subject_batches(subjects, 13, 20, seed=0, epoch=0)
    assert len(plan) == 20
    for parts in plan:
        assert [len(p) for p in parts] == [4, 4, 4]  # 13 // 3 each, subject by subject
        for s, p in zip(subjects, parts):
            assert p.max() < len(s.fmri) and len(np.unique(s.image_of_trial[p])) == len(p)  # distinct images
    again = multi_subject_batches(subjects, 13, 20, seed=0, epoch=0)
    assert all((a == b).all() for pa, pb in zip(plan, again) for a, b in zip(pa, pb))  # seeded by (seed, epoch)


def test_mindeye1_cycles_one_repetition_per_batch():
    from mindvis.align.mindeye_batches import SubjectTrials, cycle_trials

    img = np.array([0, 1, 0, 2, 1, 0, 2, 1, 3])  # image 2 has two repetitions, 3 one
    s = SubjectTrials("s", np.arange(9, dtype=np.float32)[:, None], img, np.zeros((4, 1, 1), np.float32),
                      np.zeros((4, 2, 2, 3), np.uint8))
    assert [list(cycle_trials(s, np.array([0, 1, 2, 3]), k)) for k in range(4)] == [
        [0, 1, 3, 8], [2, 4, 6, 8], [5, 7, 3, 8], [0, 1, 3, 8]]


def test_mindeye1_augmentation_is_per_image_and_seeded():
    from mindvis.align.mindeye_augment import mindeye1_augment

    x = torch.rand(64, 3, 16, 16)
    a, b = (mindeye1_augment(x, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    same = [(a[i] - x[i]).abs().max() < 1e-5 for i in range(64)]
    assert 3 <= sum(same) <= 30  # untouched with p 0.7 * 0.5 * 0.7 * 0.7 ~ 0.17 (no crop, flip, jitter, gray)
    gray = [torch.allclose(a[i, 0], a[i, 1]) and torch.allclose(a[i, 1], a[i, 2]) for i in range(64)]
    assert 8 <= sum(gray) <= 35  # grayscale with p 0.3


def test_test_time_averaging_is_the_references():
    """MindEye2 averages the model outputs of every repetition, MindEye1 decodes the averaged fMRI: both against a
    plain loop over the images."""
    from mindvis.align.mindeye_decode import average_fmri, average_outputs, decode_outputs
    from mindvis.align.mindeye_models import build_network

    cfg = build_config(AlignConfig, preset_path("align", "mindeye2-synthetic"), TINY + TINY_BLURRY)
    torch.manual_seed(0)
    net = build_network(cfg.mindeye, "mindeye2", [12], 3, 8, blurry_out_channels=3).eval()
    trials = np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32)
    groups = [np.array([0, 4, 7]), np.array([1, 2, 9]), np.array([3, 5, 6]), np.array([8])]
    got = average_outputs("mindeye2", net, trials, groups)
    with torch.no_grad():
        for i, g in enumerate(groups):
            outs = [net(torch.from_numpy(trials[j:j + 1])) for j in g]
            for k in ("regression", "contrastive", "blurry"):
                np.testing.assert_allclose(got[k][i], torch.stack([o[k][0] for o in outs]).mean(0), atol=1e-5)
    first2 = average_outputs("mindeye2", net, trials, groups, first=2)
    with torch.no_grad():
        ref = (net(torch.from_numpy(trials[[1]]))["contrastive"] + net(torch.from_numpy(trials[[2]]))["contrastive"]) / 2
    np.testing.assert_allclose(first2["contrastive"][1], ref[0], atol=1e-5)
    me1 = build_network(cfg.mindeye, "mindeye1", [12], 3, 8).eval()
    dec = decode_outputs("mindeye1", me1, average_fmri(trials, groups))
    with torch.no_grad():
        for i, g in enumerate(groups):
            np.testing.assert_allclose(dec["contrastive"][i], me1(torch.from_numpy(trials[g].mean(0, keepdims=True)))
                                       ["contrastive"][0], atol=1e-5)
    assert not np.allclose(got["contrastive"][0], decode_outputs("mindeye2", net, average_fmri(trials, groups))
                           ["contrastive"][0], atol=1e-4)  # the two rules differ


# --------------------------------------------------------------------------------------------- training


def _step_losses(family: str, steps: int = 12) -> list[float]:
    """The recipe's loss on one fixed batch over a few optimiser steps (dropout off)."""
    from mindvis.align.mindeye_decode import forward_batch
    from mindvis.align.mindeye_models import build_network, optimizer_groups, prior_config
    from mindvis.contrastive import soft_clip_loss
    from mindvis.models.mindeye_prior import MindEyePrior

    cfg = build_config(AlignConfig, preset_path("align", f"{family}-synthetic"), TINY + TINY_BLURRY)
    torch.manual_seed(0)
    net = build_network(cfg.mindeye, family, [20, 16], 4, 16, blurry_out_channels=3)
    prior = MindEyePrior(prior_config(cfg.mindeye, family, 4, 16))
    net.eval(), prior.eval()  # no dropout: the same batch gives comparable losses
    opt = torch.optim.AdamW(optimizer_groups(family, net, prior, 0.01), lr=3e-3)
    xs = [torch.randn(8, 20)] + ([torch.randn(8, 16)] if family == "mindeye2" else [])
    y = torch.randn(8 * len(xs), 4, 16)
    y = y / y[:, :1].norm(dim=-1, keepdim=True)  # scaled by the first token's norm, as the token spaces are
    losses = []
    for _ in range(steps):
        out = forward_batch(family, net, xs, list(range(len(xs))))
        prior_loss, _ = prior.loss(y, out["regression"], generator=torch.Generator().manual_seed(2))
        loss = soft_clip_loss(out["contrastive"], y, 0.0075) + 30 * prior_loss
        if "blurry" in out:
            loss = loss + 0.5 * out["blurry"].abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", ["mindeye1", "mindeye2"])
def test_losses_go_down_over_a_few_steps(family):
    losses = _step_losses(family)
    assert losses[-1] < 0.9 * losses[0] and np.mean(losses[-3:]) < np.mean(losses[:3]), losses


@pytest.fixture(scope="module")
def nsd(tmp_path_factory, cache_dir):
    """Two prepared subjects of a tiny synthetic NSD (40 voxels each)."""
    from mindvis.data_prep import nsd as prep
    from mindvis.world import SyntheticWorld, SyntheticWorldConfig

    root = tmp_path_factory.mktemp("me-nsd")
    SyntheticWorld(SyntheticWorldConfig(**NSD_WORLD)).write(root / "world", ["nsd"])
    return [prep.prepare_nsd(root / "world" / "NSD", f"subj{s:02d}", root / f"subj{s:02d}", image_size=32)
            for s in (1, 2)]


def _run(tmp_path, cache_dir, name, *args):
    rc = align_main([*args, "--out", str(tmp_path), "--run-name", name, f"data.cache_dir={cache_dir}"])
    return rc, tmp_path / name


def test_mindeye1_synthetic_recipe_runs_end_to_end(nsd, tmp_path, cache_dir):
    from mindvis.compat.mindeye import load_converted

    rc, run = _run(tmp_path, cache_dir, "me1", "--recipe", "mindeye1-synthetic", "--data-path", str(nsd[0]), *TINY)
    assert rc == 0
    rep = json.loads((run / "retrieval.json").read_text())
    assert rep["decoder"] == "mindeye1" and rep["selection"].startswith("the last epoch")
    t = rep["test"]["top1_brain_to_image"]
    assert t["chance"] == pytest.approx(1 / 10) and 0 <= t["value"] <= 1 and "test_prior" in rep
    assert [h["contrastive_loss"] for h in rep["history"]] == ["softclip"] * 3  # int(0.33 * 3) = 0
    comps = load_converted(run / "model")
    assert comps["network"].config.tokens == 17 and comps["prior"].config.num_tokens == 17
    z = np.load(run / "test_embeddings.npz")
    assert z["regression"].shape == (10, 17, 128) and z["contrastive"].shape == (10, 17 * 128)
    assert "prior" in z and len(rep["averaging"]) == 3
    # epoch selection on validation carved from training, a named option (not the reference's default)
    rc, sel = _run(tmp_path, cache_dir, "me1-val", "--recipe", "mindeye1-synthetic", "--data-path", str(nsd[0]), *TINY,
                   "mindeye.select=validation", "data.val_fraction=0.2", "train.val_every=1")
    rep = json.loads((sel / "retrieval.json").read_text())
    assert rc == 0 and "on validation" in rep["selection"] and (sel / "best" / "mindeye.json").is_file()
    assert "val_top1" in rep["history"][0] and rep["val"]["top1_brain_to_image"]["chance"] > 0


def test_resume_repeats_the_uninterrupted_run(nsd, tmp_path, cache_dir):
    from safetensors.torch import load_file

    args = ["--recipe", "mindeye1-synthetic", "--data-path", str(nsd[0]), *TINY, "loss.mixup_fraction=0.5",
            "train.checkpoint_every=2", "train.keep_checkpoints=3", "mindeye.prior_sample_test=false"]
    runs = [_run(tmp_path, cache_dir, name, *args)[1] for name in ("whole", "cut")]
    ckpts = runs[1] / "checkpoints"
    import shutil

    shutil.rmtree(ckpts / "epoch-0003")
    (ckpts / "latest").write_text("epoch-0002\n")
    assert align_main(["--resume", str(runs[1])]) == 0
    for part in ("network", "prior"):
        a, b = (load_file(r / "model" / part / "model.safetensors") for r in runs)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_mindeye2_multi_subject_then_a_new_subject(nsd, tmp_path, cache_dir, monkeypatch):
    """Joint training of two subjects, then subject 1 as a new subject fine-tuned from it: fully (the reference)
    or the adapter alone; which parameters change."""
    import mindvis.align.mindeye_training as mt
    from mindvis.compat.mindeye import load_converted

    flags = []
    real = mt.mixco_subjects
    monkeypatch.setattr(mt, "mixco_subjects", lambda *a, **k: flags.append(a[-1]) or real(*a, **k))
    common = ["--recipe", "mindeye2-synthetic", *TINY, *TINY_BLURRY, "loss.mixup_fraction=0.5"]  # BiMixCo: epoch 1
    rc, multi = _run(tmp_path, cache_dir, "multi", *common, "--data-path", str(nsd[1]),
                     f"mindeye.subjects=[{nsd[0]}]", "mindeye.reference_bug=true")
    assert rc == 0 and flags and all(flags)  # the flag reaches the multi-subject BiMixCo
    rep = json.loads((multi / "retrieval.json").read_text())
    assert len(rep["subjects"]) == 2 and "test_blurry" in rep
    assert rep["history"][0]["contrastive_loss"] == "bimixco" and "blurry_contrastive" in rep["history"][0]
    base = load_converted(multi / "model")
    assert len(base["network"].adapters) == 2
    changed = {}
    for mode in ("full", "adapter"):
        rc, run = _run(tmp_path, cache_dir, mode, *common, "--data-path", str(nsd[0]), f"mindeye.init={multi}",
                       f"mindeye.finetune={mode}")
        assert rc == 0
        new = load_converted(run / "model")
        old_sd, new_sd = base["network"].state_dict(), new["network"].state_dict()
        changed[mode] = {k for k, v in new_sd.items() if k in old_sd and not torch.equal(v, old_sd[k])}
        changed[mode] |= {f"prior.{k}" for k, v in new["prior"].state_dict().items()
                          if not torch.equal(v, base["prior"].state_dict()[k])}
        assert len(new["network"].adapters) == 1
    assert changed["adapter"] == {"adapters.0.weight", "adapters.0.bias"}
    assert {"feature_mixers.0.1.weight", "backbone_linear.weight", "clip_proj.8.weight"} <= changed["full"]
    assert any(k.startswith("prior.") for k in changed["full"])


def test_mindeye_settings_are_checked(capsys):
    for args, key in ((["--recipe", "mindeye1", "mindeye.subjects=[a]"], "mindeye.subjects"),
                      (["--recipe", "mindeye2", "mindeye.finetune=adapter"], "mindeye.finetune"),
                      (["--recipe", "mindeye2", "train.epochs=2"], "train.epochs"),
                      (["--recipe", "mindeye1", "mindeye.select=validation"], "data.val_fraction"),
                      (["--recipe", "mindeye1", "loss.contrastive=clip"], "loss.contrastive")):
        assert align_main(args + ["--data-path", "/nonexistent"]) == 2
        err = capsys.readouterr().err
        assert key in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------------------------- released checkpoints


@pytest.fixture
def fixture_targets(monkeypatch):
    """A stand-in for the token spaces at the fixtures' sizes (4 x 16): a fixed random projection of the image."""
    import torch.nn.functional as F

    import mindvis.align.mindeye_scoring as me
    from mindvis.models.image_embedders import ImageEmbedder

    w = torch.randn(3 * 8 * 8, 4 * 16, generator=torch.Generator().manual_seed(0))
    fn = lambda x: (F.interpolate(x, size=(8, 8), mode="area").flatten(1) @ w).view(-1, 4, 16)
    monkeypatch.setattr(me, "token_embedder", lambda cfg: ImageEmbedder("fixture-tokens", fn, 8, (0.5,) * 3,
                                                                        (0.5,) * 3, storage_dtype=np.float16))


def test_released_checkpoints_convert_and_score(nsd, tmp_path, cache_dir, fixture_targets, capsys):
    from mindvis.commands import convert_main
    from mindvis.compat.mindeye import load_converted, load_mindeye1

    me1, me2 = tmp_path / "me1", tmp_path / "me2"
    assert convert_main(["from-mindeye1", str(FIX / "mindeye1/prior/last.pth"), str(me1), "--lowlevel",
                         str(FIX / "mindeye1/autoencoder/epoch001.pth"), "--data-path", str(nsd[0])]) == 0
    assert "total 227,812" in capsys.readouterr().out  # the parameter count is printed
    assert convert_main(["from-mindeye2", str(FIX / "mindeye2/multisubject/last.pth"), str(me2), "--subject", "0",
                         "--data-path", str(nsd[0])]) == 0
    comps = load_converted(me1 / "model")
    ref = load_mindeye1(FIX / "mindeye1/prior/last.pth")
    x = torch.randn(2, 40)
    with torch.no_grad():
        torch.testing.assert_close(comps["network"](x)["contrastive"], ref.network(x)["contrastive"])
    assert set(comps) == {"network", "prior", "lowlevel"}
    for folder, family in ((me1, "mindeye1"), (me2, "mindeye2")):
        assert align_main(["--score", str(folder), "--run-name", "s", f"data.cache_dir={cache_dir}",
                           "eval.mindeye_subset=5", "eval.mindeye_draws=2", "eval.show=2"]) == 0
        rep = json.loads((folder / "scores" / "s" / "retrieval.json").read_text())
        assert rep["decoder"] == family and rep["test"]["top1_brain_to_image"]["chance"] == pytest.approx(0.1)
        assert rep["test_items"] == 10 and "test_prior" in rep
    assert "model outputs of every repetition" in json.loads((me2 / "scores/s/retrieval.json").read_text())["test_average"]
    capsys.readouterr()
    assert align_main(["--score", str(me1), "--run-name", "s"]) == 2  # never over an existing score
    assert "exists already" in capsys.readouterr().err


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_conversion_errors_are_one_line(tmp_path, capsys):
    from mindvis.commands import convert_main
    from mindvis.compat.mindeye import read_checkpoint

    src = FIX / "mindeye1/prior/last.pth"
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ck = read_checkpoint(src)
    foreign = tmp_path / "foreign.pth"
    torch.save({"epoch": 0, "model_state_dict": {**ck["model_state_dict"], "net.extra.weight": torch.ones(2)}}, foreign)
    marker = tmp_path / "ran"
    code = tmp_path / "code.pth"
    torch.save({"epoch": 0, "model_state_dict": ck["model_state_dict"], "lr_scheduler": _RunsCode(marker)}, code)
    cases = [(["from-mindeye1", str(src), str(out)], "--overwrite"),
             (["from-mindeye1", str(foreign), str(tmp_path / "a")], "net.extra.weight"),
             (["from-mindeye1", str(code), str(tmp_path / "b")], "refused"),
             (["from-mindeye1", str(FIX / "mindeye1/autoencoder/epoch001.pth"), str(tmp_path / "c")], "--lowlevel"),
             (["from-mindeye2", str(FIX / "mindeye2/multisubject/last.pth"), str(tmp_path / "d"), "--subject", "7"],
              "out of range")]
    for args, words in cases:
        assert convert_main(args) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert not marker.exists() and (out / "keep.txt").read_text() == "mine"
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert convert_main(["from-mindeye1", str(src), str(out), "--overwrite"]) == 0  # replaced once complete
    assert (out / "model" / "mindeye.json").is_file() and not (out / "keep.txt").exists()


# --------------------------------------------------------------------------------------------- full size (slow)


@pytest.mark.slow
def test_full_size_training_steps_on_cpu():
    """MindEye1 at full size (h 4096, 257 x 768 tokens, its prior): one training step of the recipe's loss at batch 2
    in fp32; MindEye2 (h 4096, the bigG prior, the blurry branch): one step in bf16 weights (its fp32 weights and
    gradients alone take 17.9 GB). SGD, so no optimiser state (bench/bench_mindeye_memory.py has the numbers)."""
    from mindvis.align.mindeye_decode import forward_batch
    from mindvis.contrastive import soft_clip_loss
    from mindvis.models.mindeye1 import MindEye1Network
    from mindvis.models.mindeye2 import MindEye2Network
    from mindvis.models.mindeye_prior import MindEyePrior, MindEyePriorConfig, mindeye2_prior_config

    torch.set_num_threads(2)
    for family, dtype in (("mindeye1", torch.float32), ("mindeye2", torch.bfloat16)):
        torch.manual_seed(0)
        net = (MindEye1Network() if family == "mindeye1" else MindEye2Network()).to(dtype)
        prior = MindEyePrior(MindEyePriorConfig() if family == "mindeye1" else mindeye2_prior_config()).to(dtype)
        params = list(net.parameters()) + list(prior.parameters())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = forward_batch(family, net, [torch.randn(2, 15724, dtype=dtype)], [0])
            y = torch.randn_like(out["regression"])
            loss = soft_clip_loss(out["contrastive"], y, 0.006) + 30 * prior.loss(y, out["regression"])[0]
            if "blurry" in out:
                loss = loss + 0.5 * out["blurry"].abs().mean()
        loss.backward()
        torch.optim.SGD(params, lr=1e-6).step()
        assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
        del net, prior, params, out
