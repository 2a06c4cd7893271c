"""NSD from the release layout (written by the synthetic world) through mindvis-prep nsd, the readers and stage B."""
import json
import shutil

import numpy as np
import pytest

from mindvis.data.fmri import DataError
from mindvis.data.nsd import load_nsd, nsd_fmri, nsd_pairs
from mindvis.data_prep import nsd as prep
from mindvis.world import SyntheticWorld, SyntheticWorldConfig

from .conftest import TINY_FINETUNE, TINY_WORLD

NSD_WORLD = {**TINY_WORLD, "nsd_sessions": 2, "nsd_shared": 20, "nsd_volume": [8, 8, 8],
             "nsd_voxels": [20, 16, 12, 12, 8, 8, 8]}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd") / "world"
    SyntheticWorld(SyntheticWorldConfig(**NSD_WORLD)).write(root, ["nsd"])
    return root / "NSD"


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    return prep.prepare_nsd(release, "subj01", tmp_path_factory.mktemp("prepared") / "subj01", image_size=64)


def raw_session(release, session):
    import nibabel as nib

    path = release / f"nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session{session:02d}.nii.gz"
    mask = np.asarray(nib.load(release / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz").dataobj) > 0
    return np.asarray(nib.load(path).dataobj)[mask].T / 300.0


def test_trial_table_follows_the_design(release, prepared):
    from scipy.io import loadmat

    mat = loadmat(release / "nsddata/experiments/nsd/nsd_expdesign.mat")
    order, subjectim = mat["masterordering"].ravel().astype(int), mat["subjectim"].astype(int)
    d = load_nsd(prepared)
    t = d.trials
    assert len(t["trial"]) == 1500 and d.betas.shape == (1500, 84)
    np.testing.assert_array_equal(t["nsd_id"], subjectim[0, order - 1] - 1)  # the 73k id of every trial
    np.testing.assert_array_equal(t["session"], np.arange(1500) // 750 + 1)
    np.testing.assert_array_equal(t["volume"], np.arange(1500) % 750)
    np.testing.assert_array_equal(t["shared"], order <= 20)  # the release's rule: masterordering <= #shared
    for i in (0, 7, 1499):  # repetition: earlier trials of the same image
        assert t["repetition"][i] == (t["nsd_id"][:i] == t["nsd_id"][i]).sum()
    assert np.bincount(t["repetition"]).tolist() == [500, 500, 500]
    import h5py

    with h5py.File(release / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5") as f:
        np.testing.assert_array_equal(d.images, f["imgBrick"][()][d.image_ids])  # 64 px: stored as released
    meta = json.loads((prepared / "meta.json").read_text())["settings"]
    assert meta["voxels"] == 84 and meta["shared_images"] == 20 and meta["synthetic_world"]["nsd_shared"] == 20


def test_betas_are_percent_change_zscored_per_session(release, prepared, tmp_path):
    b = np.load(prepared / "betas.npy")
    raw = raw_session(release, 2)
    shared = load_nsd(prepared).trials["shared"][750:]
    assert 0 < shared.sum() < 750
    fit = raw[~shared]  # default session-train (the MindEye2 paper): statistics of the non-shared trials only
    np.testing.assert_allclose(b[750:], (raw - fit.mean(0)) / fit.std(0), atol=1e-5)
    assert abs(raw.mean(0)).mean() > 0.2  # the world plants per-session offsets, which z-scoring removes
    assert json.loads((prepared / "meta.json").read_text())["settings"]["zscore"] == "session-train"
    every = prep.prepare_nsd(release, "1", tmp_path / "all", sessions="2", zscore_mode="session-all", image_size=32)
    np.testing.assert_allclose(np.load(every / "betas.npy"), (raw - raw.mean(0)) / raw.std(0), atol=1e-5)
    assert not np.allclose(np.load(every / "betas.npy"), b[750:], atol=1e-3)  # the two fits differ
    plain = prep.prepare_nsd(release, "1", tmp_path / "plain", sessions="2", zscore_mode="none", dtype="float16",
                             image_size=32)
    p = np.load(plain / "betas.npy")
    assert p.dtype == np.float16 and p.shape == (750, 84) and np.load(plain / "images_32.npy").shape[1:] == (32, 32, 3)
    np.testing.assert_allclose(p.astype(np.float32), raw, atol=2e-3 * np.abs(raw).max())


def test_split_averages_shared_repetitions(release, prepared):
    train, test = nsd_pairs(prepared, patch_size=16)
    d = load_nsd(prepared)
    shared = d.trials["shared"]
    assert len(test) == 20 and len(train) == int((~shared).sum()) == 1440 and test.fmri.shape[1] == 96  # 84 -> 96
    x = np.asarray(d.betas, dtype=np.float64)
    tr = x[~shared]
    mean, std = tr.mean(), tr.std()  # one mean and std per subject, as every reader
    first = int(test.ids[0][3:])
    rows = d.trials["nsd_id"] == first
    assert rows.sum() == 3
    np.testing.assert_allclose(test.fmri[0, :84], (x[rows].mean(0) - mean) / std, atol=1e-4)
    np.testing.assert_array_equal(test.images[0], d.images[np.searchsorted(d.image_ids, first)])
    avg_train, trials_test = nsd_pairs(prepared, 16, train_trials="average", include_test_trials=True)
    assert len(avg_train) == 480 and len(trials_test) == 20 + 60 and set(test.ids) <= set(trials_test.ids)
    assert nsd_fmri(prepared, 16).shape == (1440, 96) and nsd_fmri(prepared, 16, include_test=True).shape == (1500, 96)


def _interrupt_at_session_2(monkeypatch, release, out, **settings):
    """Run the preparation until it starts reading session 2, as a user's Ctrl-C would stop it."""
    real = prep.read_session

    def dies_on_session_2(path, mask):
        if "session02" in str(path):
            raise KeyboardInterrupt
        return real(path, mask)

    monkeypatch.setattr(prep, "read_session", dies_on_session_2)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_nsd(release, "subj01", out, image_size=64, **settings)
    return real


def test_interrupted_preparation_resumes_to_identical_output(release, prepared, tmp_path, monkeypatch):
    real = _interrupt_at_session_2(monkeypatch, release, tmp_path / "p")
    assert (tmp_path / "p/sessions/session01/.done").is_file() and not (tmp_path / "p/betas.npy").exists()
    monkeypatch.setattr(prep, "read_session", real)
    prep.prepare_nsd(release, "subj01", tmp_path / "p", image_size=64)
    for f in ("betas.npy", "trials.csv", "images_64.npy", "image_ids.npy", "voxels.npy"):
        assert (tmp_path / "p" / f).read_bytes() == (prepared / f).read_bytes(), f


def test_a_rerun_with_other_settings_redoes_the_finished_sessions(release, prepared, tmp_path, monkeypatch):
    real = _interrupt_at_session_2(monkeypatch, release, tmp_path / "p", zscore_mode="none")
    assert json.loads((tmp_path / "p/sessions/session01/.done").read_text())["zscore"] == "none"
    monkeypatch.setattr(prep, "read_session", real)
    out = prep.prepare_nsd(release, "subj01", tmp_path / "p", image_size=64)  # now the default z-scoring
    assert (out / "betas.npy").read_bytes() == (prepared / "betas.npy").read_bytes()  # no raw session mixed in
    items = json.loads((out / "meta.json").read_text())["items"]
    assert {r["zscore"] for r in items.values()} == {"session-train"}


@pytest.mark.parametrize("suffix", [".hdf5", ".mat"])
def test_hdf5_betas_in_matlab_order_read_the_same(release, prepared, tmp_path, suffix):
    import h5py
    import nibabel as nib

    copy = tmp_path / "NSD"
    shutil.copytree(release, copy)
    folder = copy / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    data = np.asarray(nib.load(folder / "betas_session01.nii.gz").dataobj)
    with h5py.File(folder / f"betas_session01{suffix}", "w") as f:  # .mat: the older name, same HDF5 layout
        f["betas"] = data.transpose(3, 2, 1, 0)  # as h5py shows the release's MATLAB-order file
    (folder / "betas_session01.nii.gz").unlink()
    out = prep.prepare_nsd(copy, "subj01", tmp_path / "p", sessions="1-2", image_size=64)
    assert (out / "betas.npy").read_bytes() == (prepared / "betas.npy").read_bytes()


def test_bad_release_files_are_named(release, tmp_path):
    with pytest.raises(DataError, match="subj01 session 03 not found"):
        prep.prepare_nsd(release, "subj01", tmp_path / "a", sessions="1-3")
    with pytest.raises(DataError, match="subj01 has sessions 1-40; --sessions '41' asks for"):
        prep.prepare_nsd(release, "subj01", tmp_path / "a", sessions="41")
    with pytest.raises(DataError, match="NSD subject must be subj01..subj08"):
        prep.prepare_nsd(release, "subj09", tmp_path / "a")
    copy = tmp_path / "NSD"
    shutil.copytree(release, copy)
    import nibabel as nib
    from scipy.io import savemat

    roi = copy / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 7), np.int16), np.eye(4)), roi)
    with pytest.raises(DataError, match=r"do not match the ROI grid \(8, 8, 7\)"):
        prep.prepare_nsd(copy, "subj01", tmp_path / "b", sessions="1")
    savemat(copy / "nsddata/experiments/nsd/nsd_expdesign.mat", {"masterordering": np.ones((1, 5))})
    with pytest.raises(DataError, match=r"not nsd_expdesign.mat: no \['subjectim', 'sharedix'\]"):
        prep.prepare_nsd(copy, "subj01", tmp_path / "b", sessions="1")
    (copy / "nsddata/experiments/nsd/nsd_expdesign.mat").write_text("not a mat file")
    with pytest.raises(DataError, match="not a readable MAT file"):
        prep.prepare_nsd(copy, "subj01", tmp_path / "b", sessions="1")


def test_prep_cli_then_stage_b_sample_and_nsd_suite(release, tmp_path, cache_dir, tiny_prior, monkeypatch):
    from mindvis.data_prep.cli import main as prep_main
    from mindvis.evaluation.cli import main as eval_main
    from mindvis.finetune.cli import main as finetune_main
    from mindvis.pipelines.sample_cli import main as sample_main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert prep_main(["nsd", "--root", str(release), "--subject", "1", "--image-size", "64",
                      "--out", str(tmp_path / "p")]) == 0
    assert finetune_main(["--config", "nsd-synthetic", "--dataset", "nsd", "--data-path", str(tmp_path / "p"),
                          "--prior", str(tiny_prior), "--out", str(tmp_path / "runs"), "--run-name", "nsd",
                          "train.epochs=2", f"data.cache_dir={cache_dir}", *TINY_FINETUNE]) == 0
    run = tmp_path / "runs" / "nsd"
    summary = json.loads((run / "summary.json").read_text())
    assert "loss_nsd" in summary["test"]
    assert sample_main(["--model", str(run), "--num-samples", "2", "--steps", "2", "--limit", "6",
                        "--out", str(tmp_path / "s")]) == 0
    assert eval_main(["--samples", str(tmp_path / "s"), "--suite", "nsd"]) == 0
    report = json.loads((tmp_path / "s" / "nsd_eval.json").read_text())
    assert report["settings"]["n_images"] == 6 and {"pixcorr", "ssim"} <= set(report["metrics"])
    assert report["settings"]["sampling"]["synthetic_world"]["nsd_shared"] == 20
