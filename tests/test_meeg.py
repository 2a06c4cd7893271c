"""MEG / EEG: the synthetic THINGS-MEG (in the release's layout) and THINGS-EEG2 releases, the preparation through
mne-bids (also of a tree mne-bids itself wrote), the readers (positions, subjects, the large set), mindvis-align with
the brain module over several subjects, brainmagick's loss and training, time-resolved windows, and streaming."""
import csv
import json
import shutil

import mne
import numpy as np
import pytest

from mindvis.data.fmri import DataError
from mindvis.data.meeg import concept_of
from mindvis.data.things_eeg2 import eeg2_pairs, eeg2_subjects_pairs, load_pickled_npy
from mindvis.data.things_meg import things_meg_pairs
from mindvis.data_prep.cli import main as prep_main
from mindvis.data_prep.things_meg import prepare_things_meg
from mindvis.data_prep.things_meg_settings import MEGSettings
from mindvis.pipelines.stream import WindowStream, offline_windows

from .meeg_fixtures import TINY_BRAIN_MODULE, align_args, prepared, release, run_files, runs  # noqa: F401

REFERENCES = {"BG1-1609", "BP1-1609", "BR1-1609", "G11-1609", "P11-1609", "Q11-1609"}


def tsv(path, delimiter="\t"):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_things_meg_release_layout(release):
    """The synthetic release has the real one's layout: CTF-like channels with references and compensation, the
    sidecars' columns and types, triggers of 64 per trial and a final 32, sample attributes, a flat test folder."""
    root = release / "THINGS-MEG"
    n_images = 0
    for subject in (1, 2):
        attributes = tsv(root / "sourcedata" / f"sample_attributes_P{subject}.csv", ",")
        for k, run in enumerate(run_files(release, subject)):
            raw = mne.io.read_raw_fif(run, verbose="error")
            types = raw.get_channel_types()
            assert types.count("mag") == 12 and types.count("ref_meg") == 6 and types[-1] == "stim"
            assert len(raw.info["comps"]) == 1 and mne.channels.find_layout(raw.info).kind == "CTF-275"
            assert set(raw.copy().pick("meg").ch_names) & REFERENCES  # pick("meg") keeps the references ...
            assert not set(raw.copy().pick("mag").ch_names) & REFERENCES  # ... pick("mag") does not
            channels = tsv(str(run).replace("_meg.fif", "_channels.tsv"))
            assert {r["type"] for r in channels} == {"OTHER", "MEGREFMAG", "MEGREFGRADAXIAL", "MISC"}
            assert [r["name"] for r in channels if r["status"] == "bad"] == ["MLC11-1609"]
            rows = tsv(str(run).replace("_meg.fif", "_events.tsv"))
            assert list(rows[0]) == ["onset", "duration", "trial_type", "things_category_nr", "value", "sample"]
            assert {r["trial_type"] for r in rows} == {"exp", "test", "catch"}
            found = mne.find_events(raw, stim_channel="UPPT001", verbose="error", shortest_event=1)
            assert list(found[:, 2]) == [64] * len(rows) + [32]
            np.testing.assert_allclose(found[:-1, 0] / 200.0, [float(r["onset"]) for r in rows], atol=1e-6)
            mine = [a for a in attributes if a["run_nr"] == str(k + 1)]
            assert [a["trial_type"] for a in mine] == [r["trial_type"] for r in rows]
            for a in mine:
                if a["trial_type"] == "test":
                    assert a["image_path"].count("/") == 1 and a["image_path"].startswith("images_test_meg/")
                if a["trial_type"] != "catch":
                    assert (root / "stimuli" / a["image_path"]).is_file()
                    n_images += 1
    assert n_images == 2 * (12 + 8 + 4 * 3)  # per subject: training images, held-out test-concept images, tests x 3


def test_prepared_trials_and_pairs(prepared):
    """Preparation: magnetometers without references, the bad and the broken channel left out, CTF-275 positions,
    catch trials dropped, concepts from file names; the reader: two subjects, the large set held out."""
    meta = json.loads((prepared / "sub-BIGMEG1" / "meta.json").read_text())
    x = np.load(prepared / "sub-BIGMEG1" / "trials.npy", mmap_mode="r")
    assert x.shape == (12 + 8 + 12, 10, 181)  # -0.5..1.0 s at 120 Hz; 12 sensors - MLC11 (bad) - MRO11 (broken)
    assert np.abs(x).max() <= 20 and meta["times"][0] == pytest.approx(-0.5)
    assert not set(meta["ch_names"]) & (REFERENCES | {"MLC11-1609", "MRO11-1609"})
    assert meta["channels"]["bad_in_channels_tsv"] == ["MLC11-1609"] and meta["channels"]["dropped"] == ["MRO11-1609"]
    assert meta["channels"]["reference_sensors_left_out"] == 6 and meta["catch_trials_dropped"] >= 2
    layout = np.array(meta["layout"], float)
    assert layout.shape == (10, 2) and np.isfinite(layout).all() and layout.min() == 0 and layout.max() == 1
    rows = tsv(prepared / "sub-BIGMEG1" / "trials.csv", ",")
    test_rows = [r for r in rows if r["split"] == "test"]
    assert all(r["concept"] == concept_of(r["image"]) != "images_test_meg" for r in test_rows)
    assert len({r["concept"] for r in test_rows}) == 4  # the flat test folder: each test image keeps its concept
    d = things_meg_pairs(prepared, include_test_trials=True)
    assert sorted(set(d.train.subjects)) == ["sub-BIGMEG1", "sub-BIGMEG2"] and d.montages is None
    assert d.train.fmri.shape == (24, 10, 181) and len(d.large) == 16  # 8 held-out trials per subject
    test_concepts = {r["concept"] for r in test_rows}
    assert not {concept_of(i) for i in d.train.ids} & test_concepts  # never trained on
    assert {concept_of(i) for i in d.large.ids} == test_concepts and not set(d.large.ids) & set(d.test.ids)
    avg = [i for i, n in enumerate(d.test.ids) if "#" not in n]
    assert len(avg) == 8 and len(d.test) == 8 + 8 * 3
    k = [int(r["trial"]) for r in rows if r["image"] == d.test.ids[avg[0]]]
    np.testing.assert_allclose(d.test.fmri[avg[0]], np.asarray(x[k]).mean(0), atol=1e-6)
    one = things_meg_pairs(prepared / "sub-BIGMEG2", large_set=False)  # one preparation; large set off
    assert set(one.train.subjects) == {"sub-BIGMEG2"} and one.large is None and len(one.train) == 20
    assert len(things_meg_pairs(prepared, subjects=["2"]).train) == 12
    with pytest.raises(DataError, match="holds the preparations of"):
        things_meg_pairs(prepared, subjects=["3"])
    # the evoked response: test images differ from baseline after onset more than before it
    t = np.array(meta["times"])
    evoked = d.test.fmri[avg]
    assert np.abs(evoked[..., (t > 0.08) & (t < 0.3)]).mean() > 1.2 * np.abs(evoked[..., t < 0]).mean()


def test_preparation_of_a_tree_written_by_mne_bids(release, tmp_path):
    """Issue 24: a THINGS-MEG-like BIDS tree written by mne-bids' own write_raw_bids (CTF-like references with
    compensation, a bad channel marked with mne-bids' mark_channels, the release's channel types and events, a flat
    test-image folder, the images apart in the THINGS layout) goes through mindvis-prep things-meg with the
    references and the bad channel left out and every trial paired with its image and concept."""
    import mne_bids

    src, root, images = release / "THINGS-MEG", tmp_path / "bids", tmp_path / "THINGS-images"
    runs = run_files(release, 1)
    for run in runs:
        raw = mne.io.read_raw_fif(run, verbose="error")
        assert raw.info["comps"] and len(mne.pick_types(raw.info, meg=False, ref_meg=True)) == 6
        bp = mne_bids.get_bids_path_from_fname(run).copy().update(root=root)
        mne_bids.write_raw_bids(raw, bp, overwrite=True, verbose="error")
        channels = bp.copy().update(suffix="channels", extension=".tsv").fpath
        table = tsv(channels)
        assert {r["type"] for r in table} >= {"MEGGRADAXIAL", "MEGREFMAG", "MEGREFGRADAXIAL"}
        for r in table:  # the release's types: sensors OTHER, trigger MISC
            r["type"] = {"MEGGRADAXIAL": "OTHER", "TRIG": "MISC"}.get(r["type"], r["type"])
        with open(channels, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]), delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(table)
        mne_bids.mark_channels(bp, ch_names=["MRC15-1609"], status="bad", descriptions=["noisy"], verbose="error")
        events = str(run).replace("_meg.fif", "_events.tsv")
        shutil.copy(events, bp.copy().update(suffix="events", extension=".tsv").fpath)
    (root / "sourcedata").mkdir()
    shutil.copy(src / "sourcedata" / "sample_attributes_P1.csv", root / "sourcedata")
    for p in (src / "stimuli").rglob("*.png"):  # THINGS' layout: <concept>/<file>, the test images too
        (images / concept_of(p.name)).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, images / concept_of(p.name) / p.name)
    raw = mne_bids.read_raw_bids(bp, verbose="error")
    assert raw.get_channel_types()[:12] == ["misc"] * 12  # what mne-bids makes of the release's OTHER sensors
    out = tmp_path / "prep"
    assert prep_main(["things-meg", "--root", str(root), "--subject", "1", "--out", str(out), "--images", str(images),
                      "--image-size", "32"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["ch_names"]) == 10 and not set(meta["ch_names"]) & (REFERENCES | {"MRC15-1609", "MRO11-1609"})
    assert "MLC11-1609" in meta["ch_names"]  # bad in the synthetic release's channels.tsv, not in this tree's
    assert meta["channels"]["types_restored_from_the_recording"] == 13  # 12 sensors and UPPT001
    rows = tsv(out / "trials.csv", ",")
    want = [a for a in tsv(src / "sourcedata" / "sample_attributes_P1.csv", ",") if a["trial_type"] != "catch"]
    assert [r["image"] for r in rows] == [a["image_path"] for a in want]
    assert [r["split"] for r in rows] == ["test" if a["trial_type"] == "test" else "train" for a in want]
    assert all(r["concept"] == concept_of(r["image"]) for r in rows)
    ids = json.loads((out / "image_ids.json").read_text())
    imgs = np.load(out / "images_32.npy")
    from PIL import Image

    for n in (ids[0], next(i for i in ids if i.startswith("images_test_meg/"))):
        with Image.open(src / "stimuli" / n) as im:
            np.testing.assert_array_equal(imgs[ids.index(n)], np.asarray(im.convert("RGB").resize((32, 32),
                                                                                                  Image.BICUBIC)))
    # the same trials as the synthetic release's own tree gives, on the channels both keep
    direct = prepare_things_meg(src, 1, tmp_path / "direct", MEGSettings(image_size=32))
    a, b = np.load(out / "trials.npy"), np.load(direct / "trials.npy")
    mine, theirs = meta["ch_names"], json.loads((direct / "meta.json").read_text())["ch_names"]
    both = [c for c in mine if c in theirs]
    assert len(both) == 9 and a.shape == b.shape
    np.testing.assert_allclose(a[:, [mine.index(c) for c in both]], b[:, [theirs.index(c) for c in both]], atol=1e-5)


def test_position_less_channel_is_kept_and_masked(release, tmp_path):
    """A sensor without a layout position is kept (null position) instead of refused."""
    root = tmp_path / "bids"
    shutil.copytree(release / "THINGS-MEG", root)
    for run in sorted((root / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif")):
        raw = mne.io.read_raw_fif(run, preload=True, verbose="error")
        raw.rename_channels({"MZP01-1609": "XYZ99-1609"})
        raw.save(run, overwrite=True, verbose="error")
        channels = str(run).replace("_meg.fif", "_channels.tsv")
        with open(channels) as f:
            text = f.read()
        with open(channels, "w") as f:
            f.write(text.replace("MZP01-1609", "XYZ99-1609"))
    out = prepare_things_meg(root, 1, tmp_path / "o", MEGSettings(image_size=32))
    meta = json.loads((out / "meta.json").read_text())
    assert "XYZ99-1609" in meta["ch_names"] and meta["layout"][meta["ch_names"].index("XYZ99-1609")] is None


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
    dst = tmp_path / "bids"
    shutil.copytree(release / "THINGS-MEG", dst)
    return dst, sorted((dst / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif"))


def test_bad_recordings_get_one_line_errors(release, tmp_path, capsys):
    root, runs = _copy_release(release, tmp_path)
    events = runs[0].with_name(runs[0].name.replace("_meg.fif", "_events.tsv"))
    good = events.read_text()
    events.write_text(good.splitlines()[0] + "\n" + good.splitlines()[1].replace("\texp\t", "\tcatch\t") + "\n")
    assert prep_main(["things-meg", "--root", str(root), "--subject", "1", "--out", str(tmp_path / "o1")]) == 2
    assert "without the expected stimulus events" in capsys.readouterr().err
    events.write_text(good)
    attributes = root / "sourcedata" / "sample_attributes_P1.csv"
    table = attributes.read_text()
    attributes.write_text("\n".join(table.splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="events.tsv has .* rows but sample_attributes has"):
        prepare_things_meg(root, 1, tmp_path / "o5", MEGSettings(image_size=32))
    attributes.write_text(table)
    with pytest.raises(DataError, match="UPPT001 has .* events of value 32 but events.tsv"):
        prepare_things_meg(root, 1, tmp_path / "o6", MEGSettings(image_size=32, image_trigger=32))
    shutil.move(root / "stimuli", tmp_path / "stimuli")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="images not found, e.g. images_.* give --images"):
        prepare_things_meg(root, 1, tmp_path / "o7", MEGSettings(image_size=32), images=tmp_path / "empty")
    shutil.move(tmp_path / "stimuli", root / "stimuli")
    raw = mne.io.read_raw_fif(runs[1], preload=True, verbose="error")
    raw.resample(100.0, verbose="error")
    raw.save(runs[1], overwrite=True, verbose="error")
    with pytest.raises(DataError, match="sampling rates differ between runs"):
        prepare_things_meg(root, 1, tmp_path / "o2", MEGSettings(image_size=32))
    root, runs = _copy_release(release, tmp_path / "nan")
    raw = mne.io.read_raw_fif(runs[0], preload=True, verbose="error")
    raw._data[3, 400:420] = np.nan
    raw.save(runs[0], overwrite=True, verbose="error")
    with pytest.raises(DataError, match=r"NaN/Inf in the recording from 2\.000 s \(channel MLP32-1609\)"):
        prepare_things_meg(root, 1, tmp_path / "o4", MEGSettings(image_size=32))


def test_eeg2_release_and_reader(release):
    root = release / "THINGS-EEG2"
    d = load_pickled_npy(root / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy")
    assert d["preprocessed_eeg_data"].shape == (4, 3, 17, 100) and d["ch_names"][:3] == ["Pz", "P3", "P7"]
    np.testing.assert_allclose(d["times"][[0, -1]], [-0.2, 0.79])
    pairs = eeg2_pairs(root, 1, image_size=32, include_test_trials=True)
    assert pairs.train.fmri.shape == (24, 17, 100) and pairs.train.ids[0] == pairs.train.ids[1]
    assert len(pairs.test) == 4 + 12 and pairs.layout.shape == (17, 2) and set(pairs.train.subjects) == {"sub-01"}
    assert np.isfinite(pairs.layout).all() and pairs.layout.min() == 0 and pairs.layout.max() == 1  # find_layout's
    np.testing.assert_allclose(pairs.test.fmri[0], d["preprocessed_eeg_data"][0].mean(0), atol=1e-6)
    averaged = eeg2_pairs(root, 1, image_size=32, average_train=True)
    assert averaged.train.fmri.shape == (12, 17, 100) and averaged.large is None
    both = eeg2_subjects_pairs(root, [1, "sub-02"], image_size=32)
    assert both.train.fmri.shape == (48, 17, 100) and sorted(set(both.test.subjects)) == ["sub-01", "sub-02"]
    with pytest.raises(DataError, match="sub-03"):
        eeg2_pairs(root, 3)


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


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_streaming_windows_equal_offline_windows(chunk):
    rng = np.random.default_rng(0)
    sfreq, n = 200.0, 3000
    data = rng.normal(size=(5, n))
    trig = np.zeros(n)
    trig[[150, 420, 421, 900, 2950]] = 64  # 421 continues a pulse; 2950's window runs past the end
    trig[[1500, 1501]] = 32  # another code: not an image onset
    data = np.concatenate([data, trig[None]])
    ref = offline_windows(data, sfreq, -0.5, 1.0, trigger=5, code=64)
    stream = WindowStream(sfreq, -0.5, 1.0, trigger=5, code=64)
    got = [w for a in range(0, n, chunk) for w in stream.push(data[:, a:a + chunk])]
    assert [o for o, _ in got] == [o for o, _ in ref] == [150, 420, 900]
    assert [stream.ordinal[o] for o, _ in got] == [0, 1, 2]  # the k-th trigger is the k-th trial
    for (_, a), (_, b) in zip(got, ref):
        assert np.array_equal(a, b) and a.shape == (5, 301)
    assert stream.buffer.shape[1] <= 301 + chunk  # only what a pending window needs is kept
    assert [o for o, _ in offline_windows(data, sfreq, -0.5, 1.0, trigger=5)] == [150, 420, 900, 1500]  # any edge


def test_align_settings_mirror_the_brain_module_and_refuse_no_vector(tmp_path, capsys):
    """decoder.brain_module.* are BrainModuleConfig's fields (bar the data's) with its defaults; aggregation none and
    other decoders' settings are refused in one line."""
    from dataclasses import fields

    from mindvis.align.cli import main as align_main
    from mindvis.align.config import BrainModuleSettings
    from mindvis.models.brain_module_config import BrainModuleConfig

    data_set = {"positions", "n_times", "dim", "subjects", "subject_positions"}
    mirror = {f.name: f.default for f in fields(BrainModuleSettings)}
    config = {f.name: f.default for f in fields(BrainModuleConfig) if f.name not in data_set}
    assert mirror == {**config, "blocks": 0}
    assert align_main(["--dataset", "things-meg", "--data-path", str(tmp_path), "--target", "synthetic",
                       "decoder.brain_module.aggregation=none"]) == 2
    assert "none is brainmagick's time-resolved output" in capsys.readouterr().err
    assert align_main(["--dataset", "things-meg", "--data-path", str(tmp_path), "--target", "synthetic",
                       "train.patience=-1"]) == 2
    assert "train.patience" in capsys.readouterr().err


def test_things_meg_preset_is_brainmagicks_training():
    from mindvis.align.config import AlignConfig
    from mindvis.config import build_config
    from mindvis.configs import preset_path

    cfg = build_config(AlignConfig, preset_path("align", "things-meg"))
    t = cfg.train
    assert (t.lr, t.weight_decay, t.batch_size, t.warmup_epochs, t.clip_grad, t.lr_schedule) == (3e-4, 0, 256, 0, 0,
                                                                                                  "constant")
    assert (t.select_metric, t.patience, t.val_every, t.epochs, cfg.loss.contrastive) == ("val_loss", 10, 1, 200,
                                                                                           "brainmagick")


def test_align_brain_module_over_subjects_windows_and_stream(prepared, release, runs, cache_dir, tmp_path):
    from mindvis.align.cli import main as align_main
    from mindvis.align.decoders import load_decoder
    from mindvis.data.meeg_signal import preprocess_window, robust_scale
    from mindvis.pipelines.stream import main as stream_main

    rep = json.loads((runs["bm"] / "retrieval.json").read_text())
    assert rep["decoder"] == "brain-module" and rep["test_items"] == 8  # 4 test images x 2 subjects
    assert [h["epoch"] for h in rep["history"]] == [1, 2] and rep["history"][-1]["early_stop"]  # patience 1
    assert rep["selected_epoch"] == 1 and "early stop at epoch 2: patience 1" in rep["selection"]
    assert rep["history"][0]["contrastive"] == "brainmagick"
    test = rep["test"]
    assert set(test["top1_brain_to_image"]["by_subject"]) == {"sub-BIGMEG1", "sub-BIGMEG2"}
    assert test["top1_brain_to_image"]["chance"] == 0.25  # each subject's 4 test images among its own
    assert test["top5_large_set"]["candidates"] == 8 and test["top1_large_set"]["chance"] == 1 / 8
    assert test["top5_with_gallery"]["candidates"] > 4 and rep["averaging"][-1]["repetitions"] == 3
    model = load_decoder(runs["bm"] / "best" if (runs["bm"] / "best").is_dir() else runs["bm"] / "model")
    assert model.config.subjects == ["sub-BIGMEG1", "sub-BIGMEG2"] and model.subject_layers.weights.shape[0] == 2
    with np.load(runs["bm"] / "test_embeddings.npz") as z:
        assert sorted(set(z["subjects"].tolist())) == ["sub-BIGMEG1", "sub-BIGMEG2"]
    assert align_main(align_args(prepared, cache_dir) + ["--decoder", "ridge", "--windows", "0.3:0.4", "--output-dir",
                                                          str(tmp_path / "r"), "--run-name", "r", "decoder.folds=2",
                                                          "data.subjects=[1]"]) == 0
    rows = json.loads((tmp_path / "r" / "r" / "time_resolved.json").read_text())
    assert [round(r["start"], 3) for r in rows] == [-0.5, -0.1, 0.3, 0.7]
    assert all(r["chance_top5"] == 1.0 for r in rows)  # 4 test images
    # a live window, processed alone, is exactly the prepared trial of that onset (prepared with --filtering window)
    recording = run_files(release, 2)[0]
    raw = mne.io.read_raw_fif(recording, preload=True, verbose="error")
    meta = json.loads((prepared / "sub-BIGMEG2" / "meta.json").read_text())
    stream = WindowStream(200.0, -0.5, 1.0, trigger=len(meta["ch_names"]), code=64)
    data = raw.get_data(picks=meta["ch_names"] + ["UPPT001"])
    live = [w for a in range(0, data.shape[1], 20) for w in stream.push(data[:, a:a + 20])]
    events = tsv(str(recording).replace("_meg.fif", "_events.tsv"))
    images = [k for k, r in enumerate(events) if r["trial_type"] != "catch"]
    trials = np.load(prepared / "sub-BIGMEG2" / "trials.npy")
    for j in (0, len(images) - 1):
        x = robust_scale(preprocess_window(live[images[j]][1], 200.0, -0.5, 40.0, 120.0),
                         np.array(meta["robust_median"]), np.array(meta["robust_iqr"]), 20.0)
        np.testing.assert_allclose(x, trials[j], rtol=1e-5, atol=1e-5)
    # the command replays the recording, decodes every trial window with the recording's subject's layer, and scores
    # the test images' windows against the truth of the sample attributes
    assert stream_main(["--model", str(runs["bm"]), "--input", str(recording), "--chunk", "0.05",
                        "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "stream.json").read_text())
    assert summary["windows"] == len(events) == len(live) and summary["subject"] == "sub-BIGMEG2"
    n_test = sum(r["trial_type"] == "test" for r in events)
    assert summary["scored_windows"] == n_test and summary["chance_top5"] == 1.0
    lines = [json.loads(line) for line in (tmp_path / "s" / "stream.jsonl").read_text().splitlines()]
    assert len(lines) == len(events) and len(lines[0]["top5"]) == 4  # the subject's 4 test images
    assert [e["image"] for e in lines if "image" in e] == [
        a["image_path"] for a in tsv(release / "THINGS-MEG" / "sourcedata" / "sample_attributes_P2.csv", ",")
        if a["run_nr"] == "1" and a["trial_type"] == "test"]


def test_subjects_with_different_channels_get_their_own_montage(release, prepared, tmp_path):
    """Two subjects with different channels: one channel list (the union), zeros and no position where a subject
    lacks a channel; the brain module reads each sample with its subject's montage, giving that channel no weight."""
    import torch

    from mindvis.align.decoders import brain_module_config
    from mindvis.finetune.data import StageBData
    from mindvis.models.brain_module import BrainModule

    folder = tmp_path / "prep"
    shutil.copytree(prepared / "sub-BIGMEG1", folder / "sub-BIGMEG1")
    prepare_things_meg(release / "THINGS-MEG", 2, folder / "sub-BIGMEG2", MEGSettings(
        image_size=32, filtering="window", drop_channels=["MRO11-1609", "MLF14-1609"]))
    d = things_meg_pairs(folder)
    assert d.montages is not None and len(d.ch_names) == 10
    k = d.ch_names.index("MLF14-1609")
    assert np.isnan(d.montages["sub-BIGMEG2"][k]).all() and np.isfinite(d.montages["sub-BIGMEG1"][k]).all()
    two = [i for i, s in enumerate(d.train.subjects) if s == "sub-BIGMEG2"]
    assert np.all(d.train.fmri[two][:, k] == 0)
    data = StageBData(d.train, d.train, d.test, 10, "", d.layout, d.times, d.large, d.montages)
    from omegaconf import OmegaConf

    from mindvis.align.config import AlignConfig

    cfg = OmegaConf.structured(AlignConfig)
    cfg.decoder.brain_module.merger_channels, cfg.decoder.brain_module.hidden = 4, 8
    cfg.decoder.brain_module.features, cfg.decoder.brain_module.depth = 8, 2
    cfg.decoder.brain_module.fourier_harmonics = 4
    model = BrainModule(brain_module_config(cfg, data, 8)).eval()
    x = torch.from_numpy(d.train.fmri[:2])
    for subject, zero in ((0, False), (1, True)):
        pos, valid = model.batch_positions(x, subjects=torch.tensor([subject, subject]))
        weights = model.merger.weights(pos, valid)
        assert bool((weights[:, :, k] == 0).all()) == zero and bool(valid[:, k].all()) != zero
