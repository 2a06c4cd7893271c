
import numpy as np
import pytest
import torch

from mindvis.data.dataset import FMRIDataset
from mindvis.data.fmri import (DataError, RandomVoxelZeroing, average_windows, check_finite, normalize,
                               pad_to_length, pad_to_patch_size, padded_length)
from mindvis.data.god import god_fmri, load_god_subject
from mindvis.data.hcp import hcp_subjects, load_hcp_rois, prepared_hcp

from .conftest import TINY_WORLD


@pytest.mark.parametrize("v, exact, original", [(208, 208, 224), (200, 208, 208), (16, 16, 32), (1, 16, 16)])
def test_padding_exact_and_original(v, exact, original):
    assert padded_length(v, 16, "exact") == exact
    assert padded_length(v, 16, "original") == original
    x = np.arange(2 * v, dtype=np.float32).reshape(2, v)
    assert pad_to_patch_size(x, 16, "original").shape == (2, original)
    with pytest.raises(ValueError, match="pad_mode"):
        padded_length(v, 16, "zeros")


def test_padding_wraps_around():
    x = np.arange(5, dtype=np.float32)[None]
    assert pad_to_length(x, 8).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    with pytest.raises(DataError):
        pad_to_length(x, 3)


def test_window_average_matches_array_split():
    frames = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
    w = average_windows(frames, 10)  # 2 windows: 12 and 11 frames, as np.array_split
    expected = np.stack([s.mean(0) for s in np.array_split(frames, 2)])
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    with pytest.raises(DataError, match="fewer than one window"):
        average_windows(frames[:5], 10)


def test_normalize_and_finite_checks():
    x, m, s = normalize(np.array([[1.0, 2.0, 3.0]]))
    assert abs(x.mean()) < 1e-6 and abs(x.std() - 1) < 1e-6 and m == 2.0
    with pytest.raises(DataError, match="standard deviation"):
        normalize(np.ones((2, 2)))
    bad = np.zeros((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match=r"somefile: 1 non-finite .* index \(1, 2\)"):
        check_finite(bad, "somefile")


def test_voxel_zeroing_really_zeroes_voxels():
    x = torch.randn(1, 200) + 10  # no zeros to begin with
    out = RandomVoxelZeroing(0.2, torch.Generator().manual_seed(0))(x)
    assert int((out == 0).sum()) == 40  # 20 % of the voxels of a (1, V) sample: the original zeroed none
    assert torch.equal(out[out != 0], x[out != 0])
    assert torch.equal(RandomVoxelZeroing(0.0)(x), x)
    with pytest.raises(ValueError):
        RandomVoxelZeroing(1.5)


def test_dataset_interpolation_augmentation_and_fitting():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(12, 20, dtype=np.float32).reshape(2, 4)
    ds = FMRIDataset([a, b], num_voxels=6, aug_times=3, seed=1)
    assert len(ds) == 5 * 3
    assert ds[0]["fmri"].shape == (1, 6)
    assert ds[4]["fmri"][0].tolist() == [16, 17, 18, 19, 16, 17]  # wrap-padded to 6
    for k, (i, j) in enumerate(ds.pairs):
        np.testing.assert_allclose(ds[5 + k]["fmri"][0].numpy(), 0.5 * (ds.raw(i) + ds.raw(j)))
    sub = ds.subset([0, 4])
    assert len(sub) == 2 and torch.equal(sub[1]["fmri"], ds[4]["fmri"])
    assert FMRIDataset([a], num_voxels=2)[0]["fmri"].shape == (1, 2)  # truncated


def test_hcp_loader_on_synthetic_files(tiny_world, tmp_path):
    root = tiny_world / "HCP"
    subs = hcp_subjects(root)
    assert len(subs) == TINY_WORLD["hcp_subjects"]
    x = load_hcp_rois(root / subs[0] / "HCP_visual_voxel.npz", "VC")
    assert x.shape == (200, sum(TINY_WORLD["hcp_voxels"])) and x.dtype == np.float32
    assert load_hcp_rois(root / subs[0] / "HCP_visual_voxel.npz", "V2").shape == (200, 40)
    arrays = prepared_hcp(root, "VC", 10, cache_dir=tmp_path)
    assert isinstance(arrays[0], np.memmap) and arrays[0].shape == (20, 136)
    assert abs(float(arrays[0].mean())) < 1e-4 and abs(float(arrays[0].std()) - 1) < 1e-3
    again = prepared_hcp(root, "VC", 10, cache_dir=tmp_path)  # served from the cache
    assert again[0].filename == arrays[0].filename
    assert prepared_hcp(root, "VC", 12, cache_dir=tmp_path)[0].shape == (16, 136)


def test_hcp_loader_errors(tmp_path):
    with pytest.raises(DataError, match="HCP data folder not found"):
        hcp_subjects(tmp_path / "nothing")
    (tmp_path / "100206").mkdir()
    with pytest.raises(DataError, match="100206 has no HCP_visual_voxel.npz"):
        hcp_subjects(tmp_path)
    npz = tmp_path / "100206" / "HCP_visual_voxel.npz"
    np.savez(npz, V1=np.zeros((10, 4)), V2=np.zeros((10, 4)), V3=np.zeros((10, 4)))
    with pytest.raises(DataError, match=r"missing key\(s\) \['V4'\]"):
        load_hcp_rois(npz)
    v = np.ones((10, 4))
    v[3, 1] = np.inf
    np.savez(npz, V1=v, V2=v, V3=v, V4=v)
    with pytest.raises(DataError, match="non-finite"):
        load_hcp_rois(npz)
    npz.write_text("not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz file"):
        load_hcp_rois(npz)


def test_god_loader_on_synthetic_files(tiny_world):
    root = tiny_world / "GOD"
    d = load_god_subject(root, "sbj_1", "VC")
    n_train = TINY_WORLD["n_train_classes"] * TINY_WORLD["images_per_class"]
    n_test = TINY_WORLD["n_test_classes"]
    vc = sum(TINY_WORLD["god_voxels"])
    assert d.train.shape == (n_train, vc) and d.test_avg.shape == (n_test, vc)
    assert d.test_trials.shape == (n_test * TINY_WORLD["test_repeats"], vc)
    assert sorted(d.train_image_index.tolist()) == list(range(n_train))
    assert load_god_subject(root, "sbj_1", "V1").train.shape == (n_train, 40)
    (arr,) = god_fmri(root, ["sbj_1"], "VC", 16, include_test=True)
    assert arr.shape == (n_train + n_test, padded_length(vc, 16))
    np.testing.assert_allclose(arr[:n_train, :vc].mean(), 0, atol=1e-5)


def test_god_loader_errors(tiny_world, tmp_path):
    with pytest.raises(DataError, match="sbj_9.npz"):
        load_god_subject(tiny_world / "GOD", "sbj_9")
    with pytest.raises(DataError, match=r"missing key\(s\) \['XYZ'\]"):
        load_god_subject(tiny_world / "GOD", "sbj_1", roi="XYZ")
    np.savez(tmp_path / "sbj_1.npz", arr_0=np.zeros((4, 5)), arr_1=np.zeros((2, 6)), arr_2=np.zeros((1, 6)),
             arr_3=np.arange(4), VC=np.ones(6, bool))
    with pytest.raises(DataError, match=r"arr_0 has shape \(4, 5\), expected \(trials, 6\)"):
        load_god_subject(tmp_path, "sbj_1")
