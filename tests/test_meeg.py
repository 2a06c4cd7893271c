"""MEG / EEG: the synthetic THINGS-MEG and THINGS-EEG2 releases, their preparation and readers, mindvis-align with the
brain module and time-resolved windows, and streaming."""
import csv
import json

import mne
import numpy as np
import pytest

from mindvis.data.fmri import DataError
from mindvis.data.meeg import eeg2_pairs, load_pickled_npy, sensor_layout, things_meg_pairs
from mindvis.data_prep.cli import main as prep_main
from mindvis.data_prep.things_meg import MEGSettings, prepare_things_meg
from mindvis.pipelines.stream import WindowStream, offline_windows
from mindvis.world import SyntheticWorld, SyntheticWorldConfig

from .conftest import TINY_WORLD

MEEG_WORLD = {**TINY_WORLD, "meg_sensors": 12, "meg_sfreq": 200.0, "meg_runs": 2, "meeg_test_repeats": 3,
              "eeg_train_repeats": 2, "meeg_sources_per_area": 2}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("meeg")
    SyntheticWorld(SyntheticWorldConfig(**MEEG_WORLD)).write(root, ["things-meg", "things-eeg2"])
    return root


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    return prepare_things_meg(release / "THINGS-MEG", 1, tmp_path_factory.mktemp("prep") / "meg",
                              MEGSettings(image_size=32, filtering="window"))


def runs_of(release):
    return sorted((release / "THINGS-MEG" / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif"))


def test_things_meg_release_is_real_fif_with_events(release):
    runs = runs_of(release)
    assert len(runs) == 2
    n_events = 0
    for run in runs:
        raw = mne.io.read_raw_fif(run, verbose="error")
        assert raw.info["sfreq"] == 200.0 and raw.ch_names[:2] == ["MEG001", "MEG002"] and "UPPT001" in raw.ch_names
        assert raw.get_channel_types()[:12] == ["mag"] * 12
        pos = np.array([raw.info["chs"][i]["loc"][:3] for i in range(12)])
        assert np.all(np.linalg.norm(pos, axis=1) > 0.05)  # on the helmet
        found = mne.find_events(raw, stim_channel="UPPT001", verbose="error")
        with open(str(run).replace("_meg.fif", "_events.tsv")) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(found) == len(rows)
        np.testing.assert_allclose(found[:, 0] / 200.0, [float(r["onset"]) for r in rows], atol=1e-6)
        assert all((release / "THINGS-MEG" / r["image_path"]).is_file() for r in rows)
        n_events += len(rows)
    assert n_events == 12 + 4 * 3  # training images once, test images three times


def test_prepared_trials_and_pairs(prepared, release):
    x = np.load(prepared / "trials.npy", mmap_mode="r")
    meta = json.loads((prepared / "meta.json").read_text())
    assert x.shape == (24, 12, 181)  # -0.5..1.0 s at 120 Hz
    assert np.abs(x).max() <= 20 and meta["times"][0] == pytest.approx(-0.5)
    assert len(meta["layout"]) == 12 and meta["synthetic_world"]["meg_sensors"] == 12
    d = things_meg_pairs(prepared, include_test_trials=True)
    assert d.train.fmri.shape == (12, 12, 181) and len(set(d.train.ids)) == 12
    avg = [i for i in d.test.ids if "#" not in i]
    assert len(avg) == 4 and len(d.test) == 4 + 4 * 3
    # the average of a test image is the mean of its three trials
    with open(prepared / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    k = [int(r["trial"]) for r in rows if r["image"] == avg[0]]
    np.testing.assert_allclose(d.test.fmri[0], np.asarray(x[k]).mean(0), atol=1e-6)
    assert sorted(int(r["repetition"]) for r in rows if r["image"] == avg[0]) == [0, 1, 2]
    # the evoked response: test trials differ from baseline after onset more than before it
    t = np.array(meta["times"])
    evoked = d.test.fmri[:4]
    assert np.abs(evoked[..., (t > 0.08) & (t < 0.3)]).mean() > 1.5 * np.abs(evoked[..., t < 0]).mean()


def test_preparation_resumes_and_reruns_at_once(release, tmp_path, monkeypatch):
    from mindvis.data_prep import things_meg

    real, calls = things_meg._prepare_run, []

    def dies_on_the_second(run, *a):
        if calls:
            raise KeyboardInterrupt
        calls.append(run)
        return real(run, *a)

    monkeypatch.setattr(things_meg, "_prepare_run", dies_on_the_second)
    s = MEGSettings(image_size=32)
    with pytest.raises(KeyboardInterrupt):
        prepare_things_meg(release / "THINGS-MEG", 1, tmp_path / "a", s)
    assert len(list((tmp_path / "a" / "runs").iterdir())) == 1
    calls.clear()
    monkeypatch.setattr(things_meg, "_prepare_run", lambda run, *a: (calls.append(run), real(run, *a))[1])
    prepare_things_meg(release / "THINGS-MEG", "sub-BIGMEG1", tmp_path / "a", s)
    assert len(calls) == 1 and not (tmp_path / "a" / "runs").exists()
    prepare_things_meg(release / "THINGS-MEG", 1, tmp_path / "b", s)
    assert (tmp_path / "a" / "trials.npy").read_bytes() == (tmp_path / "b" / "trials.npy").read_bytes()
    calls.clear()
    prepare_things_meg(release / "THINGS-MEG", 1, tmp_path / "a", s)  # same settings: nothing to do
    assert calls == []


def _copy_release(release, tmp_path):
    import shutil

    dst = tmp_path / "bids"
    shutil.copytree(release / "THINGS-MEG", dst)
    return dst, sorted((dst / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif"))


def test_bad_recordings_get_one_line_errors(release, tmp_path, capsys):
    root, runs = _copy_release(release, tmp_path)
    events = runs[0].with_name(runs[0].name.replace("_meg.fif", "_events.tsv"))
    good = events.read_text()
    events.write_text(good.splitlines()[0] + "\n")
    assert prep_main(["things-meg", "--root", str(root), "--subject", "1", "--out", str(tmp_path / "o1")]) == 2
    assert "without the expected stimulus events" in capsys.readouterr().err
    events.write_text(good)
    raw = mne.io.read_raw_fif(runs[1], preload=True, verbose="error")
    raw.resample(100.0, verbose="error")
    raw.save(runs[1], overwrite=True, verbose="error")
    with pytest.raises(DataError, match="sampling rates differ between runs"):
        prepare_things_meg(root, 1, tmp_path / "o2", MEGSettings(image_size=32))
    raw = mne.io.read_raw_fif(runs[0], preload=True, verbose="error")
    for ch in raw.info["chs"]:
        ch["loc"][:3] = 0
    raw.save(runs[0], overwrite=True, verbose="error")
    with pytest.raises(DataError, match="sensor positions missing"):
        prepare_things_meg(root, 1, tmp_path / "o3", MEGSettings(image_size=32))
    root, runs = _copy_release(release, tmp_path / "nan")
    raw = mne.io.read_raw_fif(runs[0], preload=True, verbose="error")
    raw._data[3, 400:420] = np.nan
    raw.save(runs[0], overwrite=True, verbose="error")
    with pytest.raises(DataError, match=r"NaN/Inf in the recording from 2\.000 s \(channel MEG004\)"):
        prepare_things_meg(root, 1, tmp_path / "o4", MEGSettings(image_size=32))


def test_eeg2_release_and_reader(release):
    root = release / "THINGS-EEG2"
    d = load_pickled_npy(root / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy")
    assert d["preprocessed_eeg_data"].shape == (4, 3, 17, 100) and d["ch_names"][:3] == ["Pz", "P3", "P7"]
    np.testing.assert_allclose(d["times"][[0, -1]], [-0.2, 0.79])
    pairs = eeg2_pairs(root, 1, image_size=32, include_test_trials=True)
    assert pairs.train.fmri.shape == (24, 17, 100) and pairs.train.ids[0] == pairs.train.ids[1]
    assert len(pairs.test) == 4 + 12 and pairs.layout.shape == (17, 2)
    np.testing.assert_allclose(pairs.test.fmri[0], d["preprocessed_eeg_data"][0].mean(0), atol=1e-6)
    averaged = eeg2_pairs(root, 1, image_size=32, average_train=True)
    assert averaged.train.fmri.shape == (12, 17, 100)
    with pytest.raises(DataError, match="sub-02"):
        eeg2_pairs(root, 2)


def test_eeg2_files_are_read_without_arbitrary_unpickling(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    np.save(tmp_path / "evil.npy", np.array({"preprocessed_eeg_data": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_pickled_npy(tmp_path / "evil.npy")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DataError, match="expected a pickled dict"):
        load_pickled_npy(tmp_path / "plain.npy")


def test_sensor_layout_projects_from_above():
    pos = np.array([[0, 0, 0.1], [0.1, 0, 0], [-0.1, 0, 0], [0, 0.1, 0]], float)
    lay = sensor_layout(pos)
    assert np.allclose(lay[0], 0, atol=1e-6) and lay[1, 0] > 0 > lay[2, 0] and lay[3, 1] > 0
    with pytest.raises(DataError, match="sensor positions missing"):
        sensor_layout(np.zeros((3, 3)))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_streaming_windows_equal_offline_windows(chunk):
    rng = np.random.default_rng(0)
    sfreq, n = 200.0, 3000
    data = rng.normal(size=(5, n))
    trig = np.zeros(n)
    trig[[150, 420, 421, 900, 2950]] = 1  # 421 continues a pulse; 2950's window runs past the end
    data = np.concatenate([data, trig[None]])
    ref = offline_windows(data, sfreq, -0.5, 1.0, trigger=5)
    stream = WindowStream(sfreq, -0.5, 1.0, trigger=5)
    got = [w for a in range(0, n, chunk) for w in stream.push(data[:, a:a + chunk])]
    assert [o for o, _ in got] == [o for o, _ in ref] == [150, 420, 900]
    for (_, a), (_, b) in zip(got, ref):
        assert np.array_equal(a, b) and a.shape == (5, 301)
    assert stream.buffer.shape[1] <= 301 + chunk  # only what a pending window needs is kept


def test_align_brain_module_ridge_windows_and_stream(prepared, release, cache_dir, tmp_path, capsys):
    from mindvis.align.cli import main as align_main
    from mindvis.data.meeg import preprocess_window, robust_scale
    from mindvis.pipelines.stream import main as stream_main

    common = ["--dataset", "things-meg", "--data-path", str(prepared), "--config", "things-meg-synthetic",
              f"data.cache_dir={cache_dir}", "train.epochs=2", "train.val_every=1", "decoder.brain_module.hidden=8",
              "decoder.brain_module.merger_channels=8", "decoder.brain_module.features=16",
              "decoder.brain_module.blocks=2", "decoder.brain_module.fourier_harmonics=4", "train.batch_size=4",
              "data.val_fraction=0.3"]
    assert align_main(common + ["--decoder", "brain-module", "--output-dir", str(tmp_path / "bm"), "--run-name", "r"]) == 0
    rep = json.loads((tmp_path / "bm" / "r" / "retrieval.json").read_text())
    assert rep["decoder"] == "brain-module" and rep["test_items"] == 4
    assert rep["test"]["top5_large_set"]["candidates"] > 4 and rep["averaging"][-1]["repetitions"] == 3
    assert align_main(common + ["--decoder", "ridge", "--windows", "0.3:0.4", "--output-dir", str(tmp_path / "r"),
                                "--run-name", "r", "decoder.folds=2"]) == 0
    rows = json.loads((tmp_path / "r" / "r" / "time_resolved.json").read_text())
    assert [round(r["start"], 3) for r in rows] == [-0.5, -0.1, 0.3, 0.7]
    assert all(r["chance_top5"] == 1.0 for r in rows)  # 4 test images
    assert (tmp_path / "r" / "r" / "time_resolved.png").is_file()
    assert align_main(common + ["--decoder", "mbm", "--output-dir", str(tmp_path / "x")]) == 2
    assert "mbm reads fMRI" in capsys.readouterr().err

    # a live window, processed alone, is exactly the prepared trial of that onset (prepared with --filtering window)
    recording = runs_of(release)[0]
    raw = mne.io.read_raw_fif(recording, preload=True, verbose="error")
    meta = json.loads((prepared / "meta.json").read_text())
    stream = WindowStream(200.0, -0.5, 1.0, trigger=len(meta["ch_names"]))
    data = raw.get_data(picks=meta["ch_names"] + ["UPPT001"])
    live = [w for a in range(0, data.shape[1], 20) for w in stream.push(data[:, a:a + 20])]
    trials = np.load(prepared / "trials.npy")
    for k in (0, len(live) - 1):
        x = robust_scale(preprocess_window(live[k][1], 200.0, -0.5, 40.0, 120.0), np.array(meta["robust_median"]),
                         np.array(meta["robust_iqr"]), 20.0)
        np.testing.assert_allclose(x, trials[k], rtol=1e-5, atol=1e-5)
    # the command replays the recording and decodes every image window
    with open(str(recording).replace("_meg.fif", "_events.tsv")) as f:
        n_onsets = sum(1 for _ in csv.DictReader(f, delimiter="\t"))
    assert stream_main(["--model", str(tmp_path / "bm" / "r"), "--input", str(recording), "--chunk", "0.05",
                        "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "stream.json").read_text())
    assert summary["windows"] == n_onsets == len(live) and summary["real_time_factor"] > 0
    lines = (tmp_path / "s" / "stream.jsonl").read_text().splitlines()
    assert len(lines) == n_onsets and len(json.loads(lines[0])["top5"]) == 4  # 4 test images to rank
    assert stream_main(["--model", str(tmp_path / "r" / "r"), "--input", str(tmp_path / "missing.fif")]) == 2
