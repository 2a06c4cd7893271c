"""The synthetic world's prior ships with mindvis, keyed by the fingerprint of the world's image settings and the
training recipe: used (no training) when the fingerprint matches, retrained when a setting differs."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mindvis.config import build_config
from mindvis.world import SyntheticWorldConfig
from mindvis.finetune import prior as P
from mindvis.finetune.config import PriorConfig


def _no_training(*a, **k):
    raise AssertionError("the prior was trained although a shipped one matches")


def test_the_shipped_prior_matches_the_default_recipe():
    (folder,) = [f for f in P.SHIPPED.iterdir() if f.is_dir()]
    fp = P.prior_fingerprint(PriorConfig())
    assert folder.name == f"synthetic-{fp}" and P.shipped_prior(fp) == folder
    # the settings it was trained with, as written by mindvis-train-prior, give the same fingerprint
    saved = build_config(PriorConfig, folder / "prior_config.yaml")
    assert P.prior_fingerprint(saved) == fp
    assert (folder / "README.md").is_file() and json.loads((folder / "history.json").read_text())["images"] > 0


def test_a_matching_fingerprint_uses_the_shipped_files_without_training(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "train_prior", _no_training)
    out = P.ensure_synthetic_prior(SyntheticWorldConfig(), tmp_path)
    shipped = P.shipped_prior(P.prior_fingerprint(PriorConfig()))
    assert out.parent == tmp_path / "priors" and out.name == shipped.name
    for part in ("unet", "vae", "class_embedder"):
        (f,) = (shipped / part).glob("*.safetensors")
        a, b = load_file(f), load_file(out / part / f.name)
        assert a.keys() == b.keys() and all(b[k].dtype == torch.float32 and torch.equal(a[k].float(), b[k]) for k in a)
    # brains and noise do not change the images, so they do not change the prior either
    assert P.ensure_synthetic_prior(SyntheticWorldConfig(snr=0.25, god_subjects=2), tmp_path) == out


@pytest.mark.parametrize("change", [{"seed": 1}, {"n_train_classes": 40}])
def test_another_world_is_not_served_the_shipped_prior(tmp_path, monkeypatch, change):
    trained = []
    monkeypatch.setattr(P, "train_prior", lambda cfg, out: trained.append((cfg, out)) or out)
    world = SyntheticWorldConfig(**change)
    out = P.ensure_synthetic_prior(world, tmp_path)
    assert trained and trained[0][1] == out and trained[0][0].synthetic == world
    assert P.shipped_prior(P.prior_fingerprint(PriorConfig(synthetic=world))) is None


def test_another_recipe_has_another_fingerprint():
    assert P.prior_fingerprint(PriorConfig(ldm_epochs=30)) != P.prior_fingerprint(PriorConfig())
    assert P.prior_fingerprint(PriorConfig(lr=5e-4)) != P.prior_fingerprint(PriorConfig())


def test_the_world_classifier_ships_too(tmp_path, monkeypatch):
    from mindvis.evaluation import classifiers as C

    def no_training(*a, **k):
        raise AssertionError("the classifier was trained although a shipped one matches")

    monkeypatch.setattr(C, "train_synthetic_classifier", no_training)
    clf = C.synthetic_classifier(SyntheticWorldConfig(), 32, tmp_path)
    (folder,) = (tmp_path / "classifiers").iterdir()
    assert (C.SHIPPED / folder.name / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert clf.probs(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    trained = []
    monkeypatch.setattr(C, "train_synthetic_classifier", lambda w, size, out: trained.append(out))
    with pytest.raises(FileNotFoundError):  # the fake trainer writes nothing
        C.synthetic_classifier(SyntheticWorldConfig(seed=3), 32, tmp_path)
    assert trained and not (C.SHIPPED / trained[0].name).exists()
