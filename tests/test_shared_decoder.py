"""The multi-subject decoder (MindEye2's idea): shared backbone trained on several synthetic subjects, a held-out
subject added by fitting only its adapter."""
import pytest
import torch

from mindvis.align.decoders import load_decoder
from mindvis.align.training import train_subjects
from mindvis.data.god import god_pairs
from mindvis.evaluation.retrieval import cosine_similarity, top_k
from mindvis.models.brain_decoders import SharedMLP, SharedMLPConfig
from mindvis.world import SyntheticWorld, SyntheticWorldConfig

from .conftest import TINY_WORLD


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    cfg = SyntheticWorldConfig(**{**TINY_WORLD, "n_train_classes": 20, "images_per_class": 4, "god_subjects": 3})
    root = SyntheticWorld(cfg).write(tmp_path_factory.mktemp("multi"), ["god"]) / "GOD"
    out = {}
    for s in ("sbj_1", "sbj_2", "sbj_3"):
        train, _ = god_pairs(root, [s])
        img = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
        y = torch.nn.functional.adaptive_avg_pool2d(img, 4).flatten(1)  # a fixed image embedding: 48 dims
        out[s] = (train.fmri, ((y - y.mean(0)) / y.std(0)).numpy())
    return out


def retrieval(model, subject, x, y):
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x), subject)["contrastive"]
    return top_k(cosine_similarity(pred, torch.from_numpy(y)), 1)


def test_a_held_out_subject_is_added_by_fitting_only_its_adapter(subjects, tmp_path):
    torch.manual_seed(0)
    voxels = {s: subjects[s][0].shape[1] for s in ("sbj_1", "sbj_2")}
    model = SharedMLP(SharedMLPConfig(voxels, 48, shared=64, hidden=64, blocks=1, projector_hidden=64))
    history = train_subjects(model, {s: subjects[s] for s in voxels}, epochs=40, lr=1e-3)["loss"]
    assert history[-1] < 0.7 * history[0]
    shared = {k: v.clone() for k, v in model.state_dict().items()}
    x3, y3 = subjects["sbj_3"]
    params = model.add_subject("sbj_3", x3.shape[1])
    before = retrieval(model, "sbj_3", x3, y3)
    train_subjects(model, {"sbj_3": (x3, y3)}, epochs=40, lr=3e-3, seed=1)
    after = retrieval(model, "sbj_3", x3, y3)
    chance = 1 / len(x3)
    assert after > 10 * chance and after > before  # 80 pairs: chance 1.25 %
    for k, v in shared.items():  # the backbone, heads and the other subjects' adapters did not move
        assert torch.equal(model.state_dict()[k], v), k
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    # saved and reloaded with its three subjects, it decodes the same
    model.save_pretrained(tmp_path / "m")
    again = load_decoder(tmp_path / "m")
    assert again.config.subjects == {**voxels, "sbj_3": x3.shape[1]}
    assert retrieval(again, "sbj_3", x3, y3) == after
    with pytest.raises(KeyError, match="no adapter for subject 'sbj_9'"):
        model(torch.from_numpy(x3), "sbj_9")
    with pytest.raises(ValueError, match="has an adapter already"):
        model.add_subject("sbj_3", 10)


def test_validation_selects_the_epoch_and_restores_its_weights(subjects):
    torch.manual_seed(0)
    x, y = subjects["sbj_1"]
    model = SharedMLP(SharedMLPConfig({"sbj_1": x.shape[1]}, 48, shared=32, hidden=32, blocks=1, projector_hidden=32))
    seen = {}

    def val(m):  # a score that peaks at the second validation (epoch 4)
        seen[len(seen) + 1] = {k: v.clone() for k, v in m.state_dict().items()}
        return {1: 0.1, 2: 0.9, 3: 0.5}[len(seen)]

    out = train_subjects(model, {"sbj_1": (x, y)}, epochs=5, lr=1e-3, val=val, val_every=2)
    assert [e for e, _ in out["val"]] == [2, 4, 5] and out["best_epoch"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[2][k]), k
    assert any(not torch.equal(seen[2][k], seen[3][k]) for k in seen[2])  # training went on after epoch 4
    view = model.for_subject("sbj_1")
    xt = torch.from_numpy(x[:4])
    assert torch.equal(view(xt)["contrastive"], model(xt, "sbj_1")["contrastive"])
    with pytest.raises(KeyError, match="sbj_2"):
        model.for_subject("sbj_2")
