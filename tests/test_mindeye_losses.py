"""MindEye's losses, schedules and optimiser settings against outputs of the reference code.

tests/fixtures/mindeye_losses/ was written by tools/reference_fixtures/mindeye_losses.py running MindEye1's and
MindEye2's own functions and statements (README.md there); here mindvis recomputes each value from the same inputs.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from mindvis.contrastive import (bimixco_loss, bimixco_targets, clip_loss, mindeye2_blurry_contrastive_loss,
                                 mindeye2_total_loss, mindeye_bimixco_epochs, mindeye_bimixco_loss,
                                 mindeye_contrastive_at, mixco, mixco_subjects, soft_clip_loss, softclip_temperatures,
                                 subject_partners)
from mindvis.mindeye_recipe import (MINDEYE_NO_DECAY, mindeye_no_decay, mindeye_onecycle, mindeye_optimizer,
                                    mindeye_param_groups)

FIX = Path(__file__).parent / "fixtures" / "mindeye_losses"
TAGS = {"me1": "mindeye1", "me2": "mindeye2"}


@pytest.fixture(scope="module", params=list(TAGS))
def ref(request):
    tag = request.param
    return tag, np.load(FIX / f"{TAGS[tag]}.npz"), json.loads((FIX / f"{TAGS[tag]}.json").read_text())


def t(a):
    return torch.from_numpy(np.asarray(a))


def test_mixco_reproduces_the_reference_mixing(ref):
    tag, d, _ = ref
    k = f"{tag}/mixco"
    mixed, perm, betas, sel = mixco(t(d[f"{k}/voxels"]), perm=t(d[f"{k}/perm"]), betas=t(d[f"{k}/betas"]),
                                    selected=t(d[f"{k}/select"]))
    assert np.allclose(mixed.numpy(), d[f"{k}/mixed"], atol=1e-6)
    assert np.array_equal(betas.numpy(), d[f"{k}/betas"])  # 1 where unselected, as the reference sets


@pytest.mark.parametrize("case", ["random", "handmade"])
@pytest.mark.parametrize("targets", ["targets", "near"])
def test_bimixco_equals_mixco_nce(ref, case, targets):
    tag, d, _ = ref
    k = f"{tag}/mixco_nce/{case}"
    preds, targs = t(d[f"{tag}/preds"]), t(d[f"{tag}/{targets}"])
    perm, betas = t(d[f"{k}/perm"]), t(d[f"{k}/betas"])
    assert abs(mindeye_bimixco_loss(preds, targs, perm, betas).item() - d[f"{k}/{targets}/loss"]) < 1e-5
    one_way = mindeye_bimixco_loss(preds, targs, perm, betas, bidirectional=False).item()
    assert abs(one_way - d[f"{k}/{targets}/loss_one_way"]) < 1e-5


def test_mindvis_additive_bimixco_differs_only_with_own_partners(ref):
    tag, d, _ = ref
    k = f"{tag}/mixco_nce/handmade"  # rows 0 (mixed) and 3 (unmixed) are their own partners
    perm, betas = t(d[f"{k}/perm"]), t(d[f"{k}/betas"])
    assigned, added = bimixco_targets(perm, betas, "assign"), bimixco_targets(perm, betas, "add")
    differs = (assigned != added).any(1).nonzero().flatten().tolist()
    assert differs == [0, 3]
    assert assigned[0, 0] == 1 - betas[0] and added[0, 0] == 1
    assert assigned[3].sum() == 0 and added[3, 3] == 1  # the reference's unmixed own-partner row is all zero
    preds, targs = t(d[f"{tag}/preds"]), t(d[f"{tag}/targets"])  # unrelated targets: the diagonal matters
    assert abs(bimixco_loss(preds, targs, perm, betas).item() - d[f"{k}/targets/loss"]) > 1e-2
    # without own partners the two agree
    perm2 = torch.roll(torch.arange(8), 1)
    assert torch.allclose(bimixco_loss(preds, targs, perm2, betas), mindeye_bimixco_loss(preds, targs, perm2, betas))


def test_plain_nce_and_softclip(ref):
    tag, d, _ = ref
    preds, near, targs = t(d[f"{tag}/preds"]), t(d[f"{tag}/near"]), t(d[f"{tag}/targets"])
    assert abs(mindeye_bimixco_loss(preds, near).item() - d[f"{tag}/mixco_nce/plain/near/loss"]) < 1e-5
    assert abs(clip_loss(preds, near, 0.006).item() - d[f"{tag}/mixco_nce/plain/near/loss"]) < 1e-5
    for i, temp in enumerate(d[f"{tag}/soft_clip/temps"]):
        for name, y in (("near", near), ("targets", targs)):
            assert abs(soft_clip_loss(preds, y, float(temp)).item() - d[f"{tag}/soft_clip/{name}/loss"][i]) < 1e-5


@pytest.mark.parametrize("epochs", [10, 150, 240, 300])
def test_softclip_temperature_schedule(ref, epochs):
    tag, d, _ = ref
    assert mindeye_bimixco_epochs(epochs) == int(d[f"{tag}/bimixco_epochs/{epochs}"])
    temps = softclip_temperatures(epochs)
    assert np.allclose(temps.numpy(), d[f"{tag}/softclip_temps/{epochs}"], rtol=0, atol=1e-9)
    switch = mindeye_bimixco_epochs(epochs)
    assert mindeye_contrastive_at(switch - 1, epochs) == ("bimixco", 0.006)
    name, temp = mindeye_contrastive_at(epochs - 1, epochs)
    assert name == "softclip" and abs(temp - 0.0075) < 1e-9
    assert abs(mindeye_contrastive_at(switch, epochs)[1] - 0.004) < 1e-9


@pytest.mark.parametrize("size", ["small", "medium"])
def test_onecycle_equals_the_reference_scheduler(ref, size):
    tag, d, meta = ref
    epochs, steps = (int(x) for x in d[f"{tag}/onecycle/{size}/args"])
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=3e-4)
    sched = mindeye_onecycle(opt, epochs, steps)
    lrs, beta1 = [], []
    for _ in range(epochs * steps):  # the values do not depend on optimiser steps (not taken: they are slow)
        lrs.append(opt.param_groups[0]["lr"])
        beta1.append(opt.param_groups[0]["betas"][0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scheduler stepped without optimizer.step()
            sched.step()
    assert np.allclose(lrs, d[f"{tag}/onecycle/{size}/lr"], rtol=1e-12, atol=0)
    assert np.allclose(beta1, d[f"{tag}/onecycle/{size}/beta1"], rtol=1e-12, atol=0)
    assert "final_div_factor=1000" in meta["onecycle_statement"] and "pct_start=2/num_epochs" in meta["onecycle_statement"]


def test_param_groups_follow_the_reference_rule(ref):
    tag, _, meta = ref
    names, decays = meta["param_groups"]["names"], meta["param_groups"]["weight_decay"]
    for group, wd in zip(names, decays):
        for name in group:
            part, _, rest = name.partition(".")
            if part == "ridge":  # MindEye2's adapters: one group, all decayed (biases too)
                assert wd == 0.01
            else:
                assert (wd == 0.0) == mindeye_no_decay(rest), name
    # LayerNorms inside Sequentials ('...N.weight') are decayed: only 'LayerNorm.weight' names are not
    assert mindeye_no_decay("LayerNorm.weight") and not mindeye_no_decay("mlp.0.1.weight")
    assert MINDEYE_NO_DECAY == ("bias", "LayerNorm.bias", "LayerNorm.weight")


def test_param_groups_in_reference_order():
    ridge, backbone = nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = mindeye_param_groups([(ridge, "all"), (backbone, "split")])
    assert [g["weight_decay"] for g in groups] == [0.01, 0.01, 0.0]
    assert len(groups[0]["params"]) == 2 and len(groups[1]["params"]) == 2 and len(groups[2]["params"]) == 2
    opt = mindeye_optimizer([(backbone, "split")])
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="mode"):
        mindeye_param_groups([(ridge, "some")])


def test_mindeye2_batch_arithmetic():
    meta = json.loads((FIX / "mindeye2.json").read_text())["batches"]
    assert meta["multisubject_42"] == {"batch_size_per_subject": 6, "subjects": 7, "num_samples_per_epoch": 30000,
                                       "num_iterations_per_epoch": 714}
    assert meta["finetune_1sess_24"]["num_iterations_per_epoch"] == 31
    assert meta["finetune_40sess_24"]["num_iterations_per_epoch"] == 1250


# ---- MindEye2's multi-subject BiMixCo ----

@pytest.fixture(scope="module")
def multi():
    d = np.load(FIX / "mindeye2.npz")
    perms = [t(d[f"me2/multi/perm_subject{s}"]) for s in range(3)]
    return d, perms


def test_reference_bug_flag_reproduces_mindeye2(multi):
    d, perms = multi
    perm = subject_partners(perms, reference_bug=True)
    assert np.array_equal(perm.numpy(), d["me2/multi/perm"])  # concatenated without offsets
    loss = mindeye_bimixco_loss(t(d["me2/multi/preds"]), t(d["me2/multi/near"]), perm, t(d["me2/multi/betas"]))
    assert abs(loss.item() - d["me2/multi/loss"]) < 1e-5
    # the voxels themselves are mixed within each subject, in the reference and here
    for s, p in enumerate(perms):
        sl = slice(4 * s, 4 * s + 4)
        mixed, *_ = mixco(t(d[f"me2/multi/voxels_subject{s}"]), perm=p, betas=t(d["me2/multi/betas"][sl]),
                          selected=t(d["me2/multi/select"][sl]))
        assert np.allclose(mixed.numpy(), d[f"me2/multi/mixed_subject{s}"], atol=1e-6)


def test_correct_partners_differ_exactly_where_they_cross_subjects(multi):
    d, perms = multi
    betas = t(d["me2/multi/betas"])
    right, bug = subject_partners(perms), subject_partners(perms, reference_bug=True)
    assert np.array_equal(right.numpy(), np.concatenate([p.numpy() + 4 * s for s, p in enumerate(perms)]))
    assert torch.equal(right[:4], bug[:4]) and not torch.equal(right[4:], bug[4:])
    assert all(((right[i] // 4) == i // 4) for i in range(12))  # every partner in its own subject
    p_right, p_bug = bimixco_targets(right, betas), bimixco_targets(bug, betas)
    rows = (p_right != p_bug).any(1).nonzero().flatten().tolist()
    own = torch.cat(perms) == torch.arange(4).repeat(3)
    expected = [i for i in range(4, 12) if betas[i] != 1 or own[i]]  # a moved 1 - beta, or a zeroed own row
    assert rows == expected and rows
    assert torch.equal(p_right[:4], p_bug[:4])
    preds, near = t(d["me2/multi/preds"]), t(d["me2/multi/near"])
    assert abs(mindeye_bimixco_loss(preds, near, right, betas).item() - d["me2/multi/loss"]) > 1e-2


def test_mixco_subjects_draws_per_subject():
    torch.manual_seed(0)
    vox = [torch.randn(4, 5), torch.randn(3, 5)]
    torch.manual_seed(1)
    mixed, perm, betas, sel = mixco_subjects(vox)
    torch.manual_seed(1)
    mixed_b, perm_b, betas_b, _ = mixco_subjects(vox, reference_bug=True)
    assert perm.tolist()[4:] == [p + 4 for p in perm_b.tolist()[4:]] and perm.tolist()[:4] == perm_b.tolist()[:4]
    assert all(torch.equal(a, b) for a, b in zip(mixed, mixed_b)) and torch.equal(betas, betas_b)
    assert [m.shape for m in mixed] == [(4, 5), (3, 5)] and betas.shape == sel.shape == (7,)


def test_blurry_contrastive_and_total_loss():
    d = np.load(FIX / "mindeye2.npz")
    loss = mindeye2_blurry_contrastive_loss(t(d["me2/blurry_cont/student"]), t(d["me2/blurry_cont/teacher"]),
                                            t(d["me2/blurry_cont/teacher_aug"]))
    assert abs(loss.item() - d["me2/blurry_cont/loss"]) < 1e-5
    assert mindeye2_total_loss(prior=2.0, clip=3.0, blurry_l1=4.0, blurry_contrastive=5.0) == 60 + 3 + 0.5 * (4 + 0.5)
    assert mindeye2_total_loss(prior=2.0, clip=3.0) == 63.0  # MindEye1: clip + 30 * prior
