"""mindvis' brain module against brainmagick's own SimpleConv (clip_conv), ClipLoss and checkpoint.th.

The fixtures (tests/fixtures/brainmagick, see its README) were written by tools/reference_fixtures/brainmagick.py
running brainmagick's code: three subjects with three montages (two with a channel the CTF-275 layout lacks), the
best and the last state of a two-epoch run saved by flashy's solver, outputs in eval and in training mode (spatial
dropout), the optional ChannelDropout, and ClipLoss values.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mindvis.compat.brainmagick import brainmagick_to_mindvis, convert_brainmagick, load_brainmagick
from mindvis.compat.safe_pickle import CheckpointError
from mindvis.models.brain_module import BrainModule
from mindvis.models.brain_module_config import BrainModuleConfig
from mindvis.models.brain_module_positions import layout_positions
from mindvis.models.brain_module_loss import brainmagick_clip_loss, brainmagick_clip_scores

FIXTURES = Path(__file__).parent / "fixtures" / "brainmagick"
CKPT = FIXTURES / "checkpoint.th"
ATOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURES / "reference.npz")


@pytest.fixture(scope="module")
def meta():
    return json.loads((FIXTURES / "reference.json").read_text())


def ctf_info(names):
    import mne
    from mne.io.constants import FIFF

    info = mne.create_info(names, 120.0, "mag")
    with info._unlock():
        for ch in info["chs"]:
            ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD
    return info


@pytest.fixture(scope="module")
def positions(ref, meta):
    """(B, C, 2) positions of each sample's recording, computed by mindvis from the channel names."""
    per_rec = [layout_positions(ctf_info(n)) for n in meta["channel_names"]]
    return torch.from_numpy(np.stack([per_rec[r] for r in ref["inputs/recording"]]))


def close(a, b, atol=ATOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def test_positions_are_brainmagicks(ref, positions):
    bm = ref["inputs/positions"]
    invalid = (bm == np.float32(-0.1)).all(-1)  # brainmagick's PositionGetter.INVALID
    assert invalid.any() and (invalid.sum(1) <= 1).all()
    assert np.array_equal(np.isnan(positions.numpy()).all(-1), invalid)
    assert np.array_equal(positions.numpy()[~invalid], bm[~invalid])  # bit for bit


@pytest.mark.parametrize("which", ["best", "last"])
def test_checkpoint_equals_brainmagick(ref, positions, which):
    model, config = load_brainmagick(CKPT, which)
    assert config["simpleconv"]["dilation_period"] == 5 and config["optim"]["lr"] == 3e-4
    x, subjects = torch.from_numpy(ref["inputs/meg"]), torch.from_numpy(ref["inputs/subject_index"])
    stages = {}
    with torch.no_grad():
        out = model(x, subjects, positions)["features"]
        model.forward_features(x, subjects, positions, stages=stages)
    close(out, ref[f"{which}/eval/output"])
    for name in ("merger", "initial_linear", "subject_layers", "encoder"):
        close(stages[name], ref[f"{which}/eval/{name}"])
    # training mode: batch statistics and the spatial dropout around brainmagick's point (one per batch) ...
    model.train()
    with torch.no_grad():
        out = model.forward_features(x, subjects, positions, centre=torch.from_numpy(ref[f"{which}/train/centre"]))
    close(out, ref[f"{which}/train/output"])
    assert np.abs(ref[f"{which}/train/output"] - ref[f"{which}/eval/output"]).max() > 0.1
    # ... drawn from the same random stream as brainmagick's
    torch.manual_seed(77)
    with torch.no_grad():
        close(model.forward_features(x, subjects, positions), ref[f"{which}/train/output"])


def test_best_and_last_differ(ref):
    assert np.abs(ref["best/eval/output"] - ref["last/eval/output"]).max() > 1e-3


def small_config(meta, **kw):
    return BrainModuleConfig(positions=[], n_times=meta["n_times"], dim=0, subjects=["0", "1", "2"],
                             merger_channels=12, fourier_harmonics=4, initial_linear=10, hidden=16, depth=6,
                             features=meta["out_channels"], aggregation="none", **kw)


def bm_key(k: str) -> str:
    return k.replace("encoder.", "encoders.meg.", 1) if k.startswith("encoder.") else k


def test_reference_initialisation(ref, meta):
    """Created in brainmagick's order, the same seed gives brainmagick's initial weights."""
    torch.manual_seed(meta["seed"])
    model = BrainModule(small_config(meta))
    state = model.state_dict()
    init = {k[len("init/"):]: ref[k] for k in ref.files if k.startswith("init/")}
    assert {bm_key(k) for k in state} == set(init)
    for k, v in state.items():
        assert np.array_equal(v.numpy(), init[bm_key(k)]), k


def test_channel_dropout(ref, meta, positions):
    ckpt_settings = load_brainmagick(CKPT)[1]["simpleconv"]
    state = {k[len("channel_dropout/state/"):]: torch.from_numpy(ref[k]) for k in ref.files
             if k.startswith("channel_dropout/state/")}
    model, _ = brainmagick_to_mindvis(state, {**ckpt_settings, "dropout": meta["channel_dropout"]})
    assert model.channel_dropout is not None
    x, subjects = torch.from_numpy(ref["inputs/meg"]), torch.from_numpy(ref["inputs/subject_index"])
    with torch.no_grad():
        close(model.forward_features(x, subjects, positions), ref["channel_dropout/eval/output"])
        model.train()
        torch.manual_seed(meta["channel_dropout_seed"])  # its point and 100 more, then the merger's point
        close(model.forward_features(x, subjects, positions), ref["channel_dropout/train/output"])


def test_clip_loss(ref):
    est, cand = torch.from_numpy(ref["clip/estimate"]), torch.from_numpy(ref["clip/candidates"])
    close(brainmagick_clip_scores(est, cand), ref["clip/scores"])
    close(brainmagick_clip_loss(est, cand), ref["clip/loss"])
    e1, c1 = torch.from_numpy(ref["clip/estimate_t1"]), torch.from_numpy(ref["clip/candidates_t1"])
    close(brainmagick_clip_loss(e1, c1), ref["clip/loss_t1"])
    close(brainmagick_clip_loss(e1[..., 0], c1[..., 0]), ref["clip/loss_t1"])  # (B, C) embeddings: T = 1
    with pytest.raises(ValueError, match="at least as many"):
        brainmagick_clip_loss(cand, est)


def test_default_config_has_clip_convs_layout(meta):
    full = meta["full_clip_conv"]
    cfg = BrainModuleConfig(positions=[[i, i % 7] for i in range(full["in_channels"])], n_times=0, dim=0,
                            subjects=[str(i) for i in range(full["n_subjects"])], features=full["out_channels"],
                            aggregation="none")
    shapes = {bm_key(k): list(v.shape) for k, v in BrainModule(cfg).state_dict().items()}
    assert shapes == full["state_dict"]


# ----------------------------------------------------------------------------- the converter
def _bm_config(**changes):
    from omegaconf import OmegaConf

    sc = {"hidden": {"meg": 16}, "depth": 6, "kernel_size": 3, "dilation_growth": 2, "dilation_period": 5,
          "skip": True, "batch_norm": True, "glu": 2, "glu_context": 1, "gelu": True, "merger": True,
          "complex_out": True, "subject_layers": True, "subject_dim": 0, "merger_dropout": 0.2, "dropout": 0.0}
    return OmegaConf.create({"model_name": "simpleconv", "simpleconv": {**sc, **changes}})


def _write(path, state, cfg):
    torch.save({"history": [], "xp.cfg": cfg, "xp.sig": "x", "all_models": state, "best_state": state,
                "best_epoch": 1}, path)
    return path


def _bm_state():
    model, _ = load_brainmagick(CKPT)
    return {"0." + bm_key(k): v for k, v in model.state_dict().items()}


def test_converter_refuses_foreign_keys_in_one_line(tmp_path):
    state = _bm_state()
    extra = _write(tmp_path / "extra.th", {**state, "0.subject_embedding.embedding.weight": torch.zeros(3, 4)},
                   _bm_config())
    with pytest.raises(CheckpointError, match="unexpected keys: subject_embedding.embedding.weight") as e:
        load_brainmagick(extra)
    assert "\n" not in str(e.value)
    feature_model = _write(tmp_path / "fm.th", {**state, "1.conv.weight": torch.zeros(2)}, _bm_config())
    with pytest.raises(CheckpointError, match="outside the brain model.*1.conv.weight"):
        load_brainmagick(feature_model)
    missing = _write(tmp_path / "missing.th", {k: v for k, v in state.items() if "glus.3" not in k}, _bm_config())
    with pytest.raises(CheckpointError, match="missing keys: encoder.glus.3.0.bias"):
        load_brainmagick(missing)
    unsupported = _write(tmp_path / "rewrite.th", state, _bm_config(rewrite=True))
    with pytest.raises(CheckpointError, match="rewrite=True") as e:
        load_brainmagick(unsupported)
    assert "\n" not in str(e.value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_converter_refuses_pickled_code(tmp_path):
    evil = _RunsCode()
    evil.marker = tmp_path / "ran"
    path = tmp_path / "evil.th"
    torch.save({"all_models": _bm_state(), "best_state": _bm_state(), "xp.cfg": _bm_config(), "payload": evil}, path)
    with pytest.raises(CheckpointError, match="refused.*system") as e:
        load_brainmagick(path)
    assert "\n" not in str(e.value) and not evil.marker.exists()


def test_convert_round_trip(tmp_path, ref, positions):
    from mindvis.commands import convert_main

    out = convert_brainmagick(CKPT, tmp_path / "bm")
    assert json.loads((out / "brainmagick_config.json").read_text())["simpleconv"]["glu"] == 2
    again = BrainModule.from_pretrained(out)
    x, subjects = torch.from_numpy(ref["inputs/meg"]), torch.from_numpy(ref["inputs/subject_index"])
    with torch.no_grad():
        close(again(x, subjects, positions)["features"], ref["best/eval/output"])
    assert convert_main(["from-brainmagick", str(CKPT), str(tmp_path / "last"), "--which", "last"]) == 0
    with torch.no_grad():
        close(BrainModule.from_pretrained(tmp_path / "last")(x, subjects, positions)["features"], ref["last/eval/output"])
    assert convert_main(["from-brainmagick", str(tmp_path / "nothing.th"), str(tmp_path / "x")]) == 2
