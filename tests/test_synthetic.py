import hashlib
import json

import numpy as np
import pytest

from mindvis.commands import synth_main
from mindvis.world import SyntheticWorld, SyntheticWorldConfig
from mindvis.world.brain import HCP_AREAS, make_brain

from .conftest import TINY_WORLD


def _digest(folder):
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            h.update(p.name.encode())
            if p.suffix == ".npz":
                with np.load(p) as z:
                    for k in sorted(z.files):
                        h.update(np.ascontiguousarray(z[k]).tobytes())
            else:
                h.update(p.read_bytes())
    return h.hexdigest()


def test_layouts_are_the_real_releases(tiny_world):
    hcp = tiny_world / "HCP"
    subject = sorted(p for p in hcp.iterdir() if p.is_dir())[0]
    with np.load(subject / "HCP_visual_voxel.npz") as z:
        assert sorted(z.files) == sorted(HCP_AREAS)
        assert z["V1"].shape == (TINY_WORLD["hcp_frames"], TINY_WORLD["hcp_voxels"][0])
    god = tiny_world / "GOD"
    with np.load(god / "images_256.npz") as z:
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape[1:] == (64, 64, 3)
        assert len(z["test_images"]) == TINY_WORLD["n_test_classes"]
    index = json.loads((god / "imagenet_class_index.json").read_text())
    train_ids = {int(r.split(",")[0].split(".")[0]) for r in (god / "imagenet_training_label.csv").read_text().split()}
    test_ids = {int(r.split(",")[0].split(".")[0]) for r in (god / "imagenet_testing_label.csv").read_text().split()}
    assert train_ids.isdisjoint(test_ids)  # disjoint train and test classes, as GOD
    wnids = {int(v[0][1:]) for v in index.values()}
    assert train_ids | test_ids <= wnids
    with np.load(god / "sbj_1.npz") as z:
        assert z["VC"].sum() == sum(TINY_WORLD["god_voxels"]) and not z["VC"].all()  # non-visual voxels exist
        assert np.array_equal(z["LVC"], z["V1"] | z["V2"] | z["V3"])
    b5k = tiny_world / "BOLD5000"
    betas = sorted((b5k / "BOLD5000_GLMsingle_ROI_betas" / "py").glob("CSI1_*.npy"))
    assert len(betas) == 10 and all("TYPED-FITHRF-GLMDENOISE-RR" in p.name for p in betas)
    stim = b5k / "BOLD5000_Stimuli"
    names = (stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").read_text().split()
    assert len(names) == TINY_WORLD["bold5000_test_images"]
    lists = [l for f in sorted((stim / "Stimuli_Presentation_Lists" / "CSI1").rglob("*.txt")) for l in f.read_text().split()]
    n_trials = TINY_WORLD["bold5000_train_images"] + TINY_WORLD["bold5000_test_images"] * TINY_WORLD["bold5000_test_repeats"]
    assert len(lists) == n_trials == len(np.load(betas[0]))
    assert sum(l.startswith("rep_") for l in lists) == TINY_WORLD["bold5000_test_images"] * (TINY_WORLD["bold5000_test_repeats"] - 1)
    imgs = np.load(stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy", allow_pickle=True).item()
    assert set(names) <= set(imgs)


def test_world_is_deterministic(tmp_path, tiny_world):
    cfg = SyntheticWorldConfig(**TINY_WORLD)
    SyntheticWorld(cfg).write(tmp_path / "again", parts=("hcp", "god"))
    for part in ("HCP", "GOD"):
        assert _digest(tmp_path / "again" / part) == _digest(tiny_world / part)
    other = SyntheticWorldConfig(**{**TINY_WORLD, "seed": 1})
    SyntheticWorld(other).write(tmp_path / "other", parts=("god",))
    assert _digest(tmp_path / "other" / "GOD") != _digest(tiny_world / "GOD")


def test_brain_structure():
    rng = np.random.default_rng(0)
    sizes = [256, 256, 256, 256]
    brain = make_brain(HCP_AREAS, sizes, 32, 16, rng)
    sl = brain.roi_slices()
    # receptive fields grow from V1 to V4: fewer grid cells carry half the weight in V1
    spread = {a: np.mean((brain.rf[s] > brain.rf[s].max(1, keepdims=True) / 2).sum(1)) for a, s in sl.items()}
    assert spread["V1"] < spread["V2"] < spread["V3"] < spread["V4"]
    # a category component only in higher areas
    assert np.abs(brain.loading[sl["V1"]]).max() == 0 and np.abs(brain.loading[sl["V4"]]).mean() > 0
    # neighbouring voxels are correlated, distant ones much less
    feats = rng.normal(size=(300, 32 * 32, 8))
    cats = rng.normal(size=(300, 16))
    with pytest.raises(RuntimeError, match="calibrate"):
        brain.signal(feats, cats)
    brain.calibrate(feats, cats)
    s = brain.signal(feats, cats)
    np.testing.assert_allclose(s.std(0), 1, atol=1e-3)
    c = np.corrcoef(s.T)
    assert np.mean(np.diag(c, 1)) > 0.5 > np.mean(np.abs(np.diag(c, 400)))


def test_css_response_rectifies_normalises_and_compresses():
    rng = np.random.default_rng(0)
    cfg = SyntheticWorldConfig(response_floor=0.3)
    brain = make_brain(HCP_AREAS, [64, 64, 64, 64], 16, 8, rng, cfg=cfg)
    feats, cats = rng.normal(size=(400, 16 * 16, 8)), rng.normal(size=(400, 8))
    brain.calibrate(feats, cats)
    s = brain.signal(feats, cats)
    # rectification: the response_floor fraction of stimuli leaves each voxel at its resting level
    at_rest = (s <= s.min(0) + 1e-5).mean(0)
    np.testing.assert_allclose(at_rest, 0.3, atol=0.01)
    c = brain.calib
    base = np.full((1, brain.n_voxels), c["mean"] + c["std"] * (c["theta"] + 1.0))  # every voxel 1 sd above
    r = lambda d: brain._respond(d, c)[0]
    v = 100  # a V2 voxel
    louder = base.copy()
    louder[0, v] = c["mean"][v] + c["std"][v] * (c["theta"][v] + 2.0)
    own = r(louder)[v] / r(base)[v]
    assert 1 < own < 2  # compressive: twice the rectified drive, less than twice the response
    neighbours = base.copy()
    neighbours[0, v - 5:v + 6] += 2 * c["std"][v - 5:v + 6]
    neighbours[0, v] = base[0, v]
    assert r(neighbours)[v] < r(base)[v]  # divisive normalisation by the neighbourhood
    far = base.copy()
    far[0, 200:] += 2 * c["std"][200:]  # another area (V4) leaves a V2 voxel's response unchanged
    assert r(far)[v] == pytest.approx(r(base)[v])
    # the linear world is the drive itself
    linear = make_brain(HCP_AREAS, [64, 64, 64, 64], 16, 8, np.random.default_rng(0),
                        cfg=SyntheticWorldConfig(response="linear"))
    linear.calibrate(feats, cats)
    d = linear.drive(feats, cats)
    np.testing.assert_allclose(linear.signal(feats, cats), (d - d.mean(0)) / d.std(0), atol=1e-4)


def test_shared_noise_is_common_to_distant_voxels():
    rng = np.random.default_rng(0)
    corr = {}
    for shared in (0.0, 0.5):
        brain = make_brain(HCP_AREAS, [64, 64, 64, 64], 16, 8, np.random.default_rng(1),
                           cfg=SyntheticWorldConfig(shared_noise=shared, noise_factors=2))
        n = brain.noise(4000, 0.25, rng)
        np.testing.assert_allclose(n.var(0), 4.0, rtol=0.1)  # variance 1/snr
        c = np.corrcoef(n.T)
        corr[shared] = np.mean(np.abs(np.diag(c, 150)))  # voxels of different areas
    assert corr[0.0] < 0.05 < 0.2 < corr[0.5]
    with pytest.raises(ValueError, match="shared_noise"):
        make_brain(HCP_AREAS, [8, 8, 8, 8], 16, 8, rng, cfg=SyntheticWorldConfig(shared_noise=1.0))
    with pytest.raises(ValueError, match="response"):
        make_brain(HCP_AREAS, [8, 8, 8, 8], 16, 8, rng, cfg=SyntheticWorldConfig(response="relu"))


def test_resting_state_is_autocorrelated_and_spatially_smooth(tiny_world):
    subject = sorted(p for p in (tiny_world / "HCP").iterdir() if p.is_dir())[0]
    with np.load(subject / "HCP_visual_voxel.npz") as z:
        x = z["V1"]
    lag1_time = np.mean([np.corrcoef(x[:-1, v], x[1:, v])[0, 1] for v in range(x.shape[1])])
    assert lag1_time > 0.3
    c = np.corrcoef(x.T)
    assert np.mean(np.diag(c, 1)) > np.mean(np.diag(c, 30))


def test_synth_command(tmp_path):
    args = ["--out", str(tmp_path / "w")] + [f"{k}={v}".replace(" ", "") for k, v in TINY_WORLD.items()] + ["--parts", "god"]
    assert synth_main(args) == 0
    assert (tmp_path / "w" / "GOD" / "sbj_1.npz").is_file() and not (tmp_path / "w" / "HCP").exists()
    assert synth_main(["--out", str(tmp_path / "x"), "no_such_key=1"]) == 2
    assert synth_main(args[:-1] + ["god", "--device", "7t"] + ["--out", str(tmp_path / "7t")]) == 0
    meta = json.loads((tmp_path / "7t" / "GOD" / "meta.json").read_text())["config"]
    assert (meta["snr"], meta["test_repeats"]) == (0.25, 2)  # the preset's snr; key=value overrides win


def test_image_only_caches_ignore_brain_settings():
    """The prior and the classifier see only images: noise or brain settings must not retrain them."""
    from mindvis.finetune.prior import PriorConfig, prior_fingerprint

    base = SyntheticWorldConfig(**TINY_WORLD)
    noisier = SyntheticWorldConfig(**{**TINY_WORLD, "snr": 0.1, "hcp_subjects": 2})
    other_images = SyntheticWorldConfig(**{**TINY_WORLD, "seed": 1})
    assert base.image_settings() == noisier.image_settings() != other_images.image_settings()
    assert prior_fingerprint(PriorConfig(synthetic=base)) == prior_fingerprint(PriorConfig(synthetic=noisier))
    assert prior_fingerprint(PriorConfig(synthetic=base)) != prior_fingerprint(PriorConfig(synthetic=other_images))
    assert prior_fingerprint(PriorConfig(synthetic=base)) != prior_fingerprint(PriorConfig(synthetic=base, lr=1e-4))
