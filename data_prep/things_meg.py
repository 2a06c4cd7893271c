"""THINGS-MEG (Hebart et al. 2023, OpenNeuro ds004212), one subject, from the BIDS release to epoched trials.

Read (under ``--root``) through mne-bids: every ``sub-BIGMEG<n>/ses-*/meg/*_task-main_run-*_meg.{ds,fif}`` with its
sidecars, ``sourcedata/sample_attributes_P<n>.csv``, and the images (``--images``). What the release holds and how
each part is read (facts from the release's sidecars, ViCCo-Group/THINGS-data ``MEG/step1_preprocessing.py`` =
"Hebart's script", and Meta's reader of the release, facebookresearch/neuroai
``neuralfetch/studies/hebart2023things.py`` = "Meta's reader"):

* **Recording and channels**: ``mne_bids.read_raw_bids`` gives the channel statuses of ``*_channels.tsv`` (bad
  channels) and the types the sidecar declares. The release types its 272 sensors ``OTHER`` and the trigger
  ``UPPT001`` ``MISC``, which mne-bids reads as ``misc`` (it maps only the BIDS types it knows; mne-bids 0.20
  ``read.py`` ``_handle_channels_reading``), so the channels mne-bids made ``misc`` get back the type, coil and
  position the recording itself gives them (``mne.io.read_raw`` of the same file). Then magnetometers only, without
  the CTF reference sensors and without the bad ones: ``raw.pick("mag", exclude="bads")`` (``pick("meg")`` would keep
  the references whenever compensation matrices exist, which CTF files have; Hebart's script epochs with
  ``picks="mag"``), bad = ``status`` bad in channels.tsv (the release marks none) plus ``drop_channels`` (default
  ``MRO11-1609``, which Hebart's script drops as broken). A channel missing or bad in any run is left out of the
  whole subject (one montage per subject).
* **Events**: ``*_events.tsv`` as the release has it (``onset, duration, trial_type, things_category_nr, value,
  sample``; trial_type exp / test / catch; onsets from the projector's optical sensor, ``task-main_events.json``):
  the exp and test rows are the image trials, catch trials are dropped. Onsets: the ``onset`` column (s from the
  recording's first sample; the release's ``sample`` is onset x 1200). Check (``image_trigger``, default 64;
  Hebart's script keeps the UPPT001 events of value 64 and replaces them one for one by the events.tsv rows;
  Meta's reader finds one 64 per trial and a final 32): the trigger channel ``trigger_channel`` must carry as many
  events of that value as events.tsv has rows (0 switches the check off).
* **Images**: events.tsv has no image paths; they are in ``sourcedata/sample_attributes_P<n>.csv``, one row per
  trial of every run in order (Hebart's script sets it as the epochs' metadata): its rows of the run
  (``session_nr``, ``run_nr``) are matched to the events.tsv rows in order (counts and trial types must agree;
  ``value`` vs ``things_image_nr`` mismatches, a known quirk of up to 20 per run in Meta's reader, are counted in
  meta.json). Without the CSV an ``image_path`` column of events.tsv is used. The concept is read from the file
  name (``aardvark_01b.jpg`` -> ``aardvark``, Meta's reader), not the folder: the test images share one flat
  folder. The release has no images (they are THINGS images, distributed apart): ``--images`` is searched at the
  ``image_path``, then ``<concept>/<file>`` (the THINGS layout), then by file name anywhere under it; without it,
  ``<root>/stimuli/<image_path>``.

Per run, with MNE-Python and Benchetrit et al. 2024's settings as defaults: band-pass ``l_freq`` - ``h_freq`` Hz;
epochs from ``tmin`` to ``tmax`` s around every exp / test image onset; baseline correction on the pre-stimulus
part; resampling to ``sfreq`` Hz. With ``filtering="window"`` each epoch is processed alone instead, exactly as
``mindvis-stream`` processes a live window (no high-pass: the baseline takes its place). Then over all runs, per
channel: robust scaling (median and interquartile range of the exp trials) and clamping to +-``clamp``. Not done:
Hebart's replacement of two signal dropouts (P1 session 11, P2 session 10) and his alternative preprocessing
(0.1-40 Hz, -0.1..1.3 s, z-scored baseline, 200 Hz).

Each run is prepared into ``runs/`` and renamed into place when complete, so an interrupted preparation resumes; a
finished run records the settings that made it, and a rerun with other settings prepares it again (never mixed).
The runs are removed once assembled.

Written to ``--out``: ``trials.npy`` (trials x channels x times, float32, memory-mappable), ``trials.csv`` (trial,
run, onset, image, concept, split (train / test), repetition), ``images_<size>.npy`` with ``image_ids.json``, and
``meta.json`` (channel names, their 2-D positions for the brain module (null: none), times, settings, the robust
scaler's medians and interquartile ranges, the channels left out and why).

The settings are in data_prep/things_meg_settings.py, the reading of the release in things_meg_release.py, the
assembling of the runs into ``--out`` in things_meg_assemble.py.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError

from .common import done, item_record, write_item
from .things_meg_assemble import _assemble
from .things_meg_release import (check_triggers, find_runs, image_paths, read_events, read_recording,
                                 read_sample_attributes, run_stem, subject_name)
from .things_meg_settings import IMAGE_TRIALS, MEGSettings


def _layout(info) -> list:
    """The brain module's 2-D positions of ``info``'s channels (null where the layout has none)."""
    from mindvis.data.meeg import montage_positions

    return [None if not np.isfinite(p).all() else [float(v) for v in p] for p in montage_positions(info)]


def _prepare_run(run: Path, s: MEGSettings, sfreq_seen: dict, attributes) -> tuple[np.ndarray, list[dict], dict]:
    import mne

    events = read_events(run)
    paths, mismatches = image_paths(run, events, attributes)
    raw, restored = read_recording(run)
    rate = float(raw.info["sfreq"])
    first = sfreq_seen.setdefault("sfreq", (rate, run.name))
    if rate != first[0]:
        raise DataError(f"{run.name} is sampled at {rate:g} Hz but {first[1]} at {first[0]:g} Hz: sampling rates "
                        "differ between runs")
    check_triggers(raw, events, run, s)
    n_refs = len(mne.pick_types(raw.info, meg=False, ref_meg=True))
    bads = list(raw.info["bads"])
    dropped = [c for c in raw.ch_names if c in s.drop_channels or c.split("-")[0] in s.drop_channels]
    raw.info["bads"] = sorted(set(bads) | set(dropped))
    try:
        raw.pick("mag", exclude="bads", verbose="error")  # CTF axial gradiometers are MNE's "mag"; no reference sensors
    except ValueError:
        raise DataError(f"{run.name}: no MEG sensor left (channel types {sorted(set(raw.get_channel_types()))}, "
                        f"bad {raw.info['bads'][:5]})") from None
    x = raw.get_data()
    bad = ~np.isfinite(x)
    if bad.any():
        t = np.flatnonzero(bad.any(0))[0] / rate
        raise DataError(f"{run.name}: NaN/Inf in the recording from {t:.3f} s (channel "
                        f"{raw.ch_names[int(np.flatnonzero(bad[:, int(t * rate)])[0])]})")
    keep = [i for i, e in enumerate(events) if e["trial_type"] in IMAGE_TRIALS]
    trials = [{"onset": events[i]["onset"], "trial_type": events[i]["trial_type"], "image_path": paths[i]}
              for i in keep]
    samples = np.round(np.array([t["onset"] for t in trials]) * rate).astype(int) + raw.first_samp
    info = {"ch_names": list(raw.ch_names), "layout": _layout(raw.info), "bad_channels": bads,
            "dropped_channels": dropped, "reference_sensors": n_refs, "restored_types": len(restored),
            "value_mismatches": mismatches, "catch_trials": sum(e["trial_type"] == "catch" for e in events)}
    if s.filtering == "window":
        from mindvis.data.meeg_signal import preprocess_window, window_bounds

        out = []
        for i, onset in enumerate(samples - raw.first_samp):
            a, b = window_bounds(int(onset), rate, s.tmin, s.tmax)
            if a < 0 or b > x.shape[1]:
                raise DataError(f"{run.name}: the epoch at onset {trials[i]['onset']} s runs past the recording's edges")
            out.append(preprocess_window(x[:, a:b], rate, s.tmin, s.h_freq, s.sfreq))
        n = out[0].shape[-1]
        return np.stack(out).astype(np.float32), trials, {**info, "times": (s.tmin + np.arange(n) / s.sfreq).tolist()}
    raw.filter(s.l_freq, s.h_freq, verbose="error")
    ev = np.stack([samples, np.zeros_like(samples), np.ones_like(samples)], 1)
    epochs = mne.Epochs(raw, ev, tmin=s.tmin, tmax=s.tmax, baseline=(s.tmin, 0), preload=True, reject=None,
                        event_repeated="error", verbose="error")
    if len(epochs) != len(trials):
        kept = set(epochs.selection.tolist())
        lost = [trials[i]["onset"] for i in range(len(trials)) if i not in kept]
        raise DataError(f"{run.name}: epochs at onsets {lost[:3]} s run past the recording's edges")
    epochs.resample(s.sfreq, verbose="error")
    return epochs.get_data().astype(np.float32), trials, {**info, "times": epochs.times.tolist()}


def prepare_things_meg(root: str | Path, subject: str | int, out: str | Path, settings: MEGSettings | None = None,
                       progress=None, images: str | Path | None = None) -> Path:
    """Epoch one subject's runs into ``out`` (see the module docstring); resumable per run."""
    s = settings or MEGSettings()
    root, out = Path(root), Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    if images is not None and not Path(images).is_dir():
        raise DataError(f"--images {images} is not a folder (the THINGS images, <concept>/<file>.jpg)")
    subject = subject_name(subject)
    runs = find_runs(root, subject)
    meta_file = out / "meta.json"
    wanted = {**asdict(s), "subject": subject}
    if meta_file.is_file():
        try:
            if json.loads(meta_file.read_text()).get("settings") == wanted:
                return out
        except json.JSONDecodeError:
            pass
    attributes = read_sample_attributes(root, subject)
    parts = out / "runs"
    parts.mkdir(parents=True, exist_ok=True)
    seen: dict = {}
    made_with = {**s.run_settings(), "subject": subject}
    bar = progress(runs, desc=f"THINGS-MEG {subject} runs") if progress else runs
    for run in bar:
        folder = parts / run_stem(run)
        if done(folder) and (item_record(folder).get("settings") != made_with
                             or item_record(folder).get("source") != str(run)):
            shutil.rmtree(folder)  # made with other settings: prepared again, never mixed with this run's
        if done(folder):
            seen.setdefault("sfreq", (item_record(folder)["raw_sfreq"], run.name))
            continue

        def fill(tmp: Path, run=run):
            x, trials, info = _prepare_run(run, s, seen, attributes)
            np.save(tmp / "epochs.npy", x)
            (tmp / "events.json").write_text(json.dumps(trials))
            return {**info, "settings": made_with, "source": str(run), "raw_sfreq": seen["sfreq"][0],
                    "trials": len(x)}

        write_item(folder, fill)
    return _assemble(root, subject, runs, parts, out, s, images)
