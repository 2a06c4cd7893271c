"""Each preparation on small raw files written here in the real formats; the stage loaders read the output."""
import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mindvis.data.bold5000 import bold5000_pairs
from mindvis.data.fmri import DataError
from mindvis.data.god import god_pairs
from mindvis.data.god_bdata import imagenet_name
from mindvis.data.hcp import load_hcp_rois, prepared_hcp
from mindvis.data_prep.cli import main as prep_main
from mindvis.data_prep.god import prepare_god
from mindvis.data_prep.hcp import prepare_hcp

RUN = "MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii"


def _cifti_run(path, data, left_vertices, right_vertices):
    bm = (nib.cifti2.BrainModelAxis.from_surface(left_vertices, 20, "CortexLeft")
          + nib.cifti2.BrainModelAxis.from_surface(right_vertices, 20, "CortexRight"))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0, 0.72, data.shape[0]), bm)).to_filename(str(path))


def _mmp_labels(path):
    # label file on other vertex subsets than the runs: matched by (structure, vertex)
    left, right = np.arange(0, 12), np.arange(0, 10)
    bm = (nib.cifti2.BrainModelAxis.from_surface(left, 20, "CortexLeft")
          + nib.cifti2.BrainModelAxis.from_surface(right, 20, "CortexRight"))
    table = {0: ("???", (0, 0, 0, 0))}
    for k, (h, r) in enumerate([(h, r) for r in ("V1", "V2", "V3", "V4") for h in "LR"]):
        table[k + 1] = (f"{h}_{r}_ROI", (1, 0, 0, 1))
    table[9] = ("L_MT_ROI", (0, 1, 0, 1))
    lab_l = np.array([1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 0, 0])  # L: V1 V1 V2 V2 V3 V3 V4 V4 MT MT - -
    lab_r = np.array([2, 4, 6, 8, 2, 0, 0, 0, 0, 0])  # R: V1 V2 V3 V4 V1
    img = nib.Cifti2Image(np.concatenate([lab_l, lab_r])[None].astype(np.float32),
                          header=(nib.cifti2.LabelAxis(["parc"], [table]), bm))
    img.to_filename(str(path))


@pytest.fixture
def hcp_raw(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "HCP1200"
    for s in ("100206", "100307"):
        data = rng.normal(size=(30, 18)).astype(np.float32)
        data[:, 0] = np.arange(30)  # left vertex 0 (V1): a known time course
        _cifti_run(raw / s / RUN, data, np.arange(10), np.arange(8))
    _mmp_labels(tmp_path / "mmp.dlabel.nii")
    return raw, tmp_path / "mmp.dlabel.nii"


def test_hcp_from_cifti(hcp_raw, tmp_path):
    raw, labels = hcp_raw
    out = prepare_hcp(raw, tmp_path / "npz", labels)
    meta = json.loads((out / "meta.json").read_text())
    # left vertices 0-9 are in the runs: V1 {0,1}, V2 {2,3}, V3 {4,5}, V4 {6,7}; right 0-7: V1 {0,4}, V2 1, V3 2, V4 3
    assert meta["items"]["100206"]["voxels"] == {"V1": 4, "V2": 3, "V3": 3, "V4": 3}
    with np.load(out / "100206" / "HCP_visual_voxel.npz") as z:
        assert z["V1"].shape == (30, 4) and z["V1"].dtype == np.float32
        np.testing.assert_array_equal(z["V1"][:, 0], np.arange(30))
    assert load_hcp_rois(out / "100206" / "HCP_visual_voxel.npz").shape == (30, 13)
    arrays = prepared_hcp(out, "VC", 10, cache_dir=tmp_path / "cache")  # the stage-A loader reads it
    assert len(arrays) == 2 and arrays[0].shape == (3, 13)


def test_hcp_interrupted_run_finishes_the_same(hcp_raw, tmp_path, monkeypatch):
    raw, labels = hcp_raw
    clean = prepare_hcp(raw, tmp_path / "clean", labels)
    import mindvis.data_prep.hcp as hcp_mod

    calls = {"n": 0}
    real = hcp_mod.write_item

    def die_on_second(folder, fill):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(folder, fill)

    monkeypatch.setattr(hcp_mod, "write_item", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_hcp(raw, tmp_path / "resumed", labels)
    assert (tmp_path / "resumed" / "100206" / ".done").is_file() and not (tmp_path / "resumed" / "100307").exists()
    monkeypatch.setattr(hcp_mod, "write_item", real)
    before = (tmp_path / "resumed" / "100206" / "V1.npy").stat().st_mtime_ns
    prepare_hcp(raw, tmp_path / "resumed", labels)
    assert (tmp_path / "resumed" / "100206" / "V1.npy").stat().st_mtime_ns == before  # not redone
    for s in ("100206", "100307"):
        with np.load(clean / s / "HCP_visual_voxel.npz") as a, np.load(tmp_path / "resumed" / s / "HCP_visual_voxel.npz") as b:
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k])


def test_hcp_input_errors(hcp_raw, tmp_path):
    raw, labels = hcp_raw
    with pytest.raises(DataError, match="HCP input folder not found"):
        prepare_hcp(tmp_path / "nope", tmp_path / "o", labels)
    bad = tmp_path / "bad.dlabel.nii"
    bm = nib.cifti2.BrainModelAxis.from_surface(np.arange(4), 20, "CortexLeft")
    nib.Cifti2Image(np.ones((1, 4), np.float32), header=(nib.cifti2.LabelAxis(["p"], [{0: ("???", (0, 0, 0, 0)),
                    1: ("L_V1_ROI", (1, 0, 0, 1))}]), bm)).to_filename(str(bad))
    with pytest.raises(DataError, match=r"no label for ROI\(s\) \['V2', 'V3', 'V4'\]"):
        prepare_hcp(raw, tmp_path / "o", bad)
    (raw / "100206" / RUN).write_bytes(b"not a cifti file")
    with pytest.raises(DataError, match="not a readable CIFTI-2 file"):
        prepare_hcp(raw, tmp_path / "o2", labels)
    data = np.full((30, 18), np.nan, np.float32)
    _cifti_run(raw / "100206" / RUN, data, np.arange(10), np.arange(8))
    with pytest.raises(DataError, match="non-finite"):
        prepare_hcp(raw, tmp_path / "o3", labels)


def test_hcp_volumetric_alternative(tmp_path, capsys):
    rng = np.random.default_rng(1)
    atlas = np.zeros((4, 4, 3), np.int16)
    atlas[0, :, 0], atlas[1, :, 0], atlas[2, :, 0], atlas[3, :2, 0] = 1, 2, 3, 4
    nib.Nifti1Image(atlas, np.eye(4)).to_filename(str(tmp_path / "atlas.nii.gz"))
    run = tmp_path / "raw" / "s1" / "rest.nii.gz"
    run.parent.mkdir(parents=True)
    nib.Nifti1Image(rng.normal(size=(4, 4, 3, 12)).astype(np.float32), np.eye(4)).to_filename(str(run))
    assert prep_main(["hcp", "--input", str(tmp_path / "raw"), "--pattern", "rest.nii.gz", "--atlas",
                      str(tmp_path / "atlas.nii.gz"), "--atlas-labels", "V1=1", "V2=2", "V3=3", "V4=4",
                      "--out", str(tmp_path / "out")]) == 0
    with np.load(tmp_path / "out" / "s1" / "HCP_visual_voxel.npz") as z:
        assert {k: z[k].shape for k in z.files} == {"V1": (12, 4), "V2": (12, 4), "V3": (12, 4), "V4": (12, 2)}
    (tmp_path / "atlas.txt.nii.gz").write_text("not a NIfTI\n")
    assert prep_main(["hcp", "--input", str(tmp_path / "raw"), "--pattern", "rest.nii.gz", "--atlas",
                      str(tmp_path / "atlas.txt.nii.gz"), "--atlas-labels", "V1=1", "V2=2", "V3=3", "V4=4",
                      "--out", str(tmp_path / "out2")]) == 2
    assert "atlas.txt.nii.gz: not a readable NIfTI file" in capsys.readouterr().err


def _bdata(path, x, dtype, stim, rois, groups=("dataSet", "metaData"), stim_key="stimulus_id"):
    cols = x.shape[1]
    data = np.concatenate([x, dtype[:, None], stim[:, None]], 1)
    keys = ["VoxelData"] + [f"ROI_{r}" for r in rois] + ["DataType", stim_key]
    value = np.full((len(keys), cols + 2), np.nan)
    value[0, :cols] = 1
    for k, (r, c) in enumerate(rois.items()):
        value[1 + k, c] = 1
    value[-2, cols], value[-1, cols + 1] = 1, 1
    with h5py.File(path, "w") as f:
        f[groups[0]] = data
        f[f"{groups[1]}/key"] = np.array(keys, dtype="S")
        f[f"{groups[1]}/description"] = np.array(keys, dtype="S")
        f[f"{groups[1]}/value"] = value


@pytest.mark.parametrize("groups,stim_key", [(("dataSet", "metaData"), "stimulus_id"),
                                             (("dataset", "metadata"), "stimulus_id"),
                                             (("dataSet", "metaData"), "Label")])
def test_god_from_bdata(tmp_path, groups, stim_key):
    rng = np.random.default_rng(0)
    train = [1518878.005958, 1518878.005959, 2084071.000001, 2084071.000002]
    test = [3000001.000002, 3000002.000003]
    imgs = tmp_path / "images"
    imgs.mkdir()
    for s in train + test:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(imgs / f"{imagenet_name(f'{s:.6f}')}.JPEG")
    files = []
    for k in range(2):
        stim = np.array(rng.permutation(train).tolist() + test * 2)
        dtype = np.array([1] * 4 + [2] * 4, float)
        x = rng.normal(size=(8, 20)).astype(np.float32)
        x[:, 3] = np.arange(8)
        _bdata(tmp_path / f"Subject{k + 1}.h5", x, dtype, stim, {"V1": np.arange(6), "VC": np.arange(16)}, groups,
               stim_key)
        files.append(tmp_path / f"Subject{k + 1}.h5")
    out = prepare_god(files, imgs, tmp_path / "god", image_size=32)
    with np.load(out / "sbj_1.npz") as z:
        assert z["arr_0"].shape == (4, 20) and z["arr_1"].shape == (4, 20) and z["arr_2"].shape == (2, 20)
        assert z["VC"].sum() == 16 and z["V1"].sum() == 6
        np.testing.assert_allclose(z["arr_2"][:, 3], [(4 + 6) / 2, (5 + 7) / 2])  # test averaged per image
    tr, te = god_pairs(out, ["sbj_1", "sbj_2"], "VC", 16)  # the stage-B reader takes it
    assert len(tr) == 8 and len(te) == 4 and tr.images.shape[1:] == (32, 32, 3)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["items"]["sbj_2"]["roi_voxels"]["V1"] == 6 and meta["settings"]["train_images"] == 4
    assert meta["items"]["sbj_1"]["bdata_layout"] == {"groups": list(groups), "stimulus_key": stim_key}
    # single test trials are paired with their own images (arr_4): the trials of an image average to its test row
    with np.load(out / "sbj_1.npz") as z:
        np.testing.assert_array_equal(z["arr_4"], [0, 0, 1, 1])  # arr_1 is grouped by image
    _, te = god_pairs(out, ["sbj_1"], "VC", 16, include_test_trials=True)
    avg = {i: te.fmri[k] for k, i in enumerate(te.ids) if "#trial" not in i}
    for stim_id, row in avg.items():
        trials = [te.fmri[k] for k, i in enumerate(te.ids) if i.startswith(stim_id + "#trial")]
        assert len(trials) == 2
        np.testing.assert_allclose(np.mean(trials, 0), row, atol=1e-5)
    with pytest.raises(DataError, match="not an HDF5 file"):
        (tmp_path / "x.h5").write_text("no")
        prepare_god([tmp_path / "x.h5"], imgs, tmp_path / "god2")


def test_bold5000_from_nifti(tmp_path, capsys):
    rng = np.random.default_rng(0)
    grid = (5, 4, 3)
    masks = tmp_path / "masks"
    masks.mkdir()
    k = 0
    for h in ("LH", "RH"):
        for r in ("EarlyVis", "LOC", "OPA", "PPA", "RSC"):
            m = np.zeros(grid, np.uint8)
            m.flat[k * 3:(k + 1) * 3] = 1
            nib.Nifti1Image(m, np.eye(4)).to_filename(str(masks / f"CSI1_mask-{h}{r}.nii.gz"))
            k += 1
    names = [f"img{i}.jpg" for i in range(6)]
    trials = names + ["img0.jpg", "img1.jpg"]  # img0 and img1 repeated
    betas = []
    for ses, chunk in enumerate((trials[:4], trials[4:])):
        b = rng.normal(size=(*grid, len(chunk))).astype(np.float32)
        f = tmp_path / f"CSI1_ses-{ses + 1:02d}.nii.gz"
        nib.Nifti1Image(b, np.eye(4)).to_filename(str(f))
        betas.append(f)
    st = tmp_path / "BOLD5000_Stimuli"
    lists = st / "Stimuli_Presentation_Lists" / "CSI1" / "CSI1_sess01"
    lists.mkdir(parents=True)
    seen, lines = set(), []
    for n in trials:
        lines.append(("rep_" if n in seen else "") + n)
        seen.add(n)
    (lists / "CSI1_sess01_run01.txt").write_text("\n".join(lines) + "\n")
    (st / "Scene_Stimuli" / "Presented_Stimuli" / "Scene").mkdir(parents=True)
    (st / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").write_text("img0.jpg\nimg1.jpg\n")
    for n in names:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(st / "Scene_Stimuli" / "Presented_Stimuli" / "Scene" / n)
    assert prep_main(["bold5000", "--betas", f"CSI1={tmp_path}/CSI1_ses-*.nii.gz", "--masks", f"CSI1={masks}",
                      "--stimuli", str(st), "--out", str(tmp_path / "b5k")]) == 0
    x = np.load(tmp_path / "b5k" / "BOLD5000_GLMsingle_ROI_betas" / "py" /
                "CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_LHLOC.npy")
    assert x.shape == (8, 3)
    raw = np.asarray(nib.load(str(betas[0])).dataobj)
    np.testing.assert_allclose(x[0], raw.reshape(-1, 4)[3:6, 0])  # the LOC voxels of trial 1
    tr, te = bold5000_pairs(tmp_path / "b5k", ["CSI1"], 16)  # the stage-B reader takes it
    assert len(tr) == 4 and len(te) == 2 and tr.fmri.shape[1] == 32
    assert prep_main(["bold5000", "--betas", f"CSI1={tmp_path}/none-*.nii.gz", "--masks", f"CSI1={masks}",
                      "--stimuli", str(st), "--out", str(tmp_path / "x")]) == 2
    # a text file where a NIfTI belongs: one line naming it, for betas and for masks
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "CSI1_ses-01.nii.gz").write_text("not a NIfTI\n")
    assert prep_main(["bold5000", "--betas", f"CSI1={fake}/CSI1_ses-*.nii.gz", "--masks", f"CSI1={masks}",
                      "--stimuli", str(st), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err  # (the progress bar shares stderr)
    assert "CSI1_ses-01.nii.gz: not a readable NIfTI file" in err.splitlines()[-1] and "Traceback" not in err
    bad_masks = tmp_path / "bad_masks"
    shutil.copytree(masks, bad_masks)
    (bad_masks / "CSI1_mask-LHLOC.nii.gz").write_bytes(b"\x1f\x8b broken")
    assert prep_main(["bold5000", "--betas", f"CSI1={tmp_path}/CSI1_ses-*.nii.gz", "--masks", f"CSI1={bad_masks}",
                      "--stimuli", str(st), "--out", str(tmp_path / "z")]) == 2
    assert "CSI1_mask-LHLOC.nii.gz: not a readable NIfTI file" in capsys.readouterr().err


def test_hcp_runs_per_subject_fix_clean_and_7t(hcp_raw, tmp_path):
    raw, labels = hcp_raw
    rng = np.random.default_rng(3)
    sub = raw / "100206" / "MNINonLinear" / "Results"
    for name, value in (("rfMRI_REST1_RL", 101.0), ("rfMRI_REST2_LR", 102.0), ("rfMRI_REST1_7T_PA", 107.0)):
        data = rng.normal(size=(30, 18)).astype(np.float32)
        data[:, 0] = value
        _cifti_run(sub / name / f"{name}_Atlas_MSMAll.dtseries.nii", data, np.arange(10), np.arange(8))
    clean = rng.normal(size=(30, 18)).astype(np.float32)
    clean[:, 0] = -5.0
    _cifti_run(sub / "rfMRI_REST1_LR" / "rfMRI_REST1_LR_Atlas_MSMAll_hp2000_clean.dtseries.nii", clean,
               np.arange(10), np.arange(8))
    one = prepare_hcp(raw, tmp_path / "one", labels, subjects=["100206"])  # default: REST1_LR alone
    with np.load(one / "100206" / "HCP_visual_voxel.npz") as z:
        np.testing.assert_array_equal(z["V1"][:, 0], np.arange(30))
    meta = json.loads((one / "meta.json").read_text())
    assert [p.split("/")[-2] for p in meta["items"]["100206"]["runs"]] == ["rfMRI_REST1_LR"]
    every = prepare_hcp(raw, tmp_path / "all", labels, subjects=["100206"], runs="all")  # 3T runs only
    with np.load(every / "100206" / "HCP_visual_voxel.npz") as z:
        assert z["V1"].shape[0] == 90 and 107.0 not in set(z["V1"][:, 0].tolist())
    with_7t = prepare_hcp(raw, tmp_path / "7t", labels, subjects=["100206"], runs="all", include_7t=True)
    with np.load(with_7t / "100206" / "HCP_visual_voxel.npz") as z:
        assert z["V1"].shape[0] == 120
    assert prep_main(["hcp", "--input", str(raw), "--labels", str(labels), "--subjects", "100206", "--fix-clean",
                      "--out", str(tmp_path / "clean")]) == 0
    with np.load(tmp_path / "clean" / "100206" / "HCP_visual_voxel.npz") as z:
        np.testing.assert_array_equal(z["V1"][:, 0], np.full(30, -5.0))
