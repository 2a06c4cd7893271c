"""Stage-B readers: GOD (MinD-Vis npz and Kamitani BData HDF5 layouts), BOLD5000, splits, augmentation, errors."""
import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from mindvis.data.bold5000 import bold5000_pairs, load_image_dict
from mindvis.data.fmri import DataError
from mindvis.data.god import god_pairs
from mindvis.data.god_bdata import god_pairs_bdata, imagenet_name
from mindvis.data.pairs import PairedDataset, PairedSplit, concat_splits, group_split, single_trials

from .conftest import TINY_WORLD

N_TRAIN = TINY_WORLD["n_train_classes"] * TINY_WORLD["images_per_class"]
N_TEST = TINY_WORLD["n_test_classes"]


def test_god_mindvis_layout(tiny_world):
    train, test = god_pairs(tiny_world / "GOD", ["sbj_1"], "VC", 16)
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert train.fmri.shape[1] % 16 == 0 and train.images.dtype == np.uint8
    assert set(train.labels) .isdisjoint(set(test.labels))  # GOD: test classes unseen in training
    assert set(test.labels) == set(range(TINY_WORLD["n_train_classes"], TINY_WORLD["n_train_classes"] + N_TEST))
    _, test_trials = god_pairs(tiny_world / "GOD", ["sbj_1"], "VC", 16, include_test_trials=True)
    assert len(test_trials) == N_TEST * (1 + TINY_WORLD["test_repeats"])
    singles = single_trials(test_trials)
    assert len(singles) == N_TEST * TINY_WORLD["test_repeats"]
    np.testing.assert_array_equal(singles.labels, np.tile(test.labels, TINY_WORLD["test_repeats"]))
    # the repetition average of the single trials is the averaged test fMRI (the same z-scoring)
    reps = singles.fmri.reshape(TINY_WORLD["test_repeats"], N_TEST, -1)
    np.testing.assert_allclose(reps.mean(0), test.fmri, atol=1e-5)
    with pytest.raises(DataError, match="no single trials"):
        single_trials(test)
    # the image of a training trial is the one arr_3 names
    with np.load(tiny_world / "GOD" / "sbj_1.npz") as z, np.load(tiny_world / "GOD" / "images_256.npz") as im:
        assert np.array_equal(train.images[3], im["train_images"][z["arr_3"][3]])


def _write_bdata(path, x, dtype, stim, roi_cols):
    n_cols = x.shape[1] + 2
    data = np.concatenate([x, dtype[:, None], stim[:, None]], axis=1)
    keys = ["ROI_VC", "DataType", "stimulus_id"]
    value = np.full((3, n_cols), np.nan)
    value[0, roi_cols] = 1
    value[1, x.shape[1]] = 1
    value[2, x.shape[1] + 1] = 1
    with h5py.File(path, "w") as f:
        f.create_dataset("dataSet", data=data)
        f.create_dataset("metaData/key", data=np.array(keys, dtype="S"))
        f.create_dataset("metaData/description", data=np.array(["", "", ""], dtype="S"))
        f.create_dataset("metaData/value", data=value)


def test_god_bdata_layout(tmp_path):
    rng = np.random.default_rng(0)
    train_stims = [1518878.005958, 1518878.005959, 2084071.000001]
    test_stims = [3000001.000002, 3000002.000003]
    stim = np.array(train_stims + test_stims * 3)
    dtype = np.array([1] * 3 + [2] * 6, dtype=float)
    x = rng.normal(size=(9, 20)).astype(np.float32)
    _write_bdata(tmp_path / "Subject1.h5", x, dtype, stim, roi_cols=np.arange(18))  # 2 voxels outside VC
    imgs = tmp_path / "images"
    imgs.mkdir()
    for s in train_stims + test_stims:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(imgs / f"{imagenet_name(f'{s:.6f}')}.JPEG")
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"7": ["n01518878", "ostrich"], "9": ["n02084071", "dog"]}))
    train, test = god_pairs_bdata([str(tmp_path / "Subject1.h5")], imgs, index, "VC", 16, image_size=32)
    assert len(train) == 3 and len(test) == 2  # test averaged over its 3 repetitions
    assert train.fmri.shape == (3, 32) and train.images.shape == (3, 32, 32, 3)
    assert train.labels.tolist() == [7, 7, 9] and test.labels.tolist() == [-1, -1]
    raw_test0 = x[[3, 5, 7], :18].mean(0)
    mean, std = x[:3, :18].mean(), x[:3, :18].std()
    np.testing.assert_allclose(test.fmri[0, :18], (raw_test0 - mean) / std, rtol=1e-4, atol=1e-5)
    assert imagenet_name("1518878.005958") == "n01518878_5958"
    (imgs / "n01518878_5958.JPEG").unlink()
    with pytest.raises(DataError, match="no image n01518878_5958.JPEG"):
        god_pairs_bdata([str(tmp_path / "Subject1.h5")], imgs, index, "VC", 16, image_size=32)
    with pytest.raises(DataError, match="no metadata key 'ROI_V1'"):
        god_pairs_bdata([str(tmp_path / "Subject1.h5")], imgs, index, "V1", 16)


def test_bold5000_layout(tiny_world):
    train, test = bold5000_pairs(tiny_world / "BOLD5000", ["CSI1"], 16)
    assert len(train) == TINY_WORLD["bold5000_train_images"] and len(test) == TINY_WORLD["bold5000_test_images"]
    assert train.fmri.shape[1] == 96  # 2 hemispheres x (16 + 8 * 4) voxels
    assert set(train.ids).isdisjoint(test.ids)
    _, trials = bold5000_pairs(tiny_world / "BOLD5000", ["CSI1"], 16, include_test_trials=True)
    assert len(trials) == TINY_WORLD["bold5000_test_images"] * (1 + TINY_WORLD["bold5000_test_repeats"])
    singles = single_trials(trials)
    assert len(singles) == TINY_WORLD["bold5000_test_images"] * TINY_WORLD["bold5000_test_repeats"]
    assert {i.split("#")[0] for i in singles.ids} == set(test.ids)


def test_image_dictionary_is_read_without_running_code(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/mindvis-pwned-npy",))

    np.save(tmp_path / "img_dict.npy", np.array({"a.jpg": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refused"):
        load_image_dict(tmp_path / "img_dict.npy")
    assert not os.path.exists("/tmp/mindvis-pwned-npy")
    np.save(tmp_path / "ok.npy", np.array({"a.jpg": np.zeros((2, 2, 3), np.uint8)}, dtype=object), allow_pickle=True)
    assert load_image_dict(tmp_path / "ok.npy")["a.jpg"].shape == (2, 2, 3)


def test_mismatched_and_missing_files(tiny_world, tmp_path):
    with pytest.raises(DataError, match="mismatched pair counts"):
        PairedSplit(np.zeros((3, 16)), np.zeros((2, 8, 8, 3), np.uint8), np.zeros(3), ["a", "b", "c"])
    with pytest.raises(DataError, match="GOD images not found"):
        god_pairs(tmp_path, ["sbj_1"])
    god = tmp_path / "GOD"
    god.mkdir()
    for f in (tiny_world / "GOD").iterdir():
        (god / f.name).write_bytes(f.read_bytes())
    with np.load(god / "images_256.npz") as z:
        np.savez(god / "images_256.npz", train_images=z["train_images"][:-1], test_images=z["test_images"])
    with pytest.raises(DataError, match=rf"{N_TRAIN - 1} train / {N_TEST} test images but {N_TRAIN} / {N_TEST} label rows"):
        god_pairs(god, ["sbj_1"])
    with pytest.raises(DataError, match="BOLD5000 ROI betas not found"):
        bold5000_pairs(tmp_path)


def test_group_split_and_concat():
    groups = np.repeat(np.arange(10), 4)
    tr, val = group_split(groups, 0.2, seed=0)
    assert len(val) == 8 and len(tr) == 32 and set(groups[val]).isdisjoint(groups[tr])
    a = PairedSplit(np.ones((2, 16), np.float32), np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), ["a", "b"], ["x"] * 2)
    b = PairedSplit(np.ones((1, 32), np.float32), np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1), ["c"], ["y"])
    j = concat_splits([a, b])
    assert j.fmri.shape == (3, 32) and j.dataset == ["x", "x", "y"]


def test_paired_dataset_augmentation():
    rng = np.random.default_rng(0)
    split = PairedSplit(rng.normal(size=(4, 100)).astype(np.float32) + 5, rng.integers(0, 255, (4, 40, 40, 3),
                        dtype=np.uint8), np.arange(4), list("abcd"))
    torch.manual_seed(0)
    train = PairedDataset(split, 32, train=True, zero_voxels=0.2, crop_ratio=0.2, crop_p=1.0)
    item = train[0]
    assert item["fmri"].shape == (1, 100) and int((item["fmri"] == 0).sum()) == 20
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
    test = PairedDataset(split, 32, train=False)
    assert int((test[0]["fmri"] == 0).sum()) == 0
    assert torch.equal(test[1]["image"], test[1]["image"])  # no randomness at test time
    full = torch.from_numpy(split.images[1]).permute(2, 0, 1).float() / 127.5 - 1
    assert not torch.allclose(train.image_tensor(1, True), test.image_tensor(1, False)) or full.shape[1] == 32


def _god_copy(tiny_world, tmp_path):
    god = tmp_path / "GOD"
    god.mkdir()
    for f in (tiny_world / "GOD").iterdir():
        (god / f.name).write_bytes(f.read_bytes())
    return god


@pytest.mark.parametrize("name", ["sbj_1.npz", "images_256.npz"])
def test_a_text_file_where_an_npz_belongs_is_a_one_line_error(name, tiny_world, tmp_path):
    god = _god_copy(tiny_world, tmp_path)
    (god / name).write_text("this is not an npz archive\n")
    with pytest.raises(DataError, match=rf"{name}: not a readable \.npz file"):
        god_pairs(god, ["sbj_1"])


def test_negative_image_indices_are_refused(tiny_world, tmp_path):
    god = _god_copy(tiny_world, tmp_path)
    with np.load(god / "sbj_1.npz") as z:
        arrays = dict(z)
    arrays["arr_3"] = arrays["arr_3"].copy()
    arrays["arr_3"][0] = -1  # would silently pair the trial with the last image
    np.savez(god / "sbj_1.npz", **arrays)
    with pytest.raises(DataError, match="arr_3 holds negative image indices"):
        god_pairs(god, ["sbj_1"])


@pytest.mark.parametrize("with_arr_4", [True, False])
def test_single_test_trials_average_to_their_own_test_row(with_arr_4, tiny_world, tmp_path):
    """The synthetic release writes arr_4; without it, the documented order (repetition after repetition)."""
    god = _god_copy(tiny_world, tmp_path)
    with np.load(god / "sbj_1.npz") as z:
        arrays = dict(z)
    assert "arr_4" in arrays
    if not with_arr_4:
        del arrays["arr_4"]
        np.savez(god / "sbj_1.npz", **arrays)
    _, te = god_pairs(god, ["sbj_1"], include_test_trials=True)
    for k, stim_id in enumerate(te.ids):
        if "#trial" in stim_id:
            continue
        rows = [j for j, i in enumerate(te.ids) if i.startswith(stim_id + "#trial")]
        assert len(rows) == TINY_WORLD["test_repeats"]
        np.testing.assert_allclose(te.fmri[rows].mean(0), te.fmri[k], atol=1e-5)
        assert all(np.array_equal(te.images[j], te.images[k]) for j in rows)


def test_unequal_test_repetitions_are_refused(tiny_world, tmp_path):
    god = _god_copy(tiny_world, tmp_path)
    with np.load(god / "sbj_1.npz") as z:
        arrays = dict(z)
    arrays["arr_4"] = arrays["arr_4"].copy()
    arrays["arr_4"][0] = arrays["arr_4"][1]
    np.savez(god / "sbj_1.npz", **arrays)
    with pytest.raises(DataError, match="unequal numbers of trials"):
        god_pairs(god, ["sbj_1"], include_test_trials=True)
