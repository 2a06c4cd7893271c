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
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError, error_summary
from mindvis.data.meeg import concept_of, robust_scale
from mindvis.releases import SYNTHETIC_GENERATOR
from mindvis.utils.io import atomic_write

from .common import done, item_record, write_item, write_meta

IMAGE_TRIALS = ("exp", "test")
FILTERING = ("run", "window")


@dataclass
class MEGSettings:
    tmin: float = -0.5
    tmax: float = 1.0
    l_freq: float = 0.1
    h_freq: float = 40.0
    sfreq: float = 120.0
    clamp: float = 20.0
    image_size: int = 256
    # run: band-pass each whole run, then epoch (Meta's offline pipeline); window: each epoch alone, as mindvis-stream
    # does live (baseline, low-pass, resample; see mindvis.data.meeg.preprocess_window), so a decoder trained on it
    # sees what the stream gives it
    filtering: str = "run"
    trigger_channel: str = "UPPT001"  # the release's image trigger channel (Hebart's script, Meta's reader)
    image_trigger: int = 64  # its value at every trial onset; 0: no check of the triggers against events.tsv
    drop_channels: list = field(default_factory=lambda: ["MRO11-1609"])  # broken sensors (Hebart's script)

    def __post_init__(self):
        if self.filtering not in FILTERING:
            raise DataError(f"filtering must be one of {FILTERING}, got {self.filtering!r}")
        if not self.tmin < 0 < self.tmax:
            raise DataError(f"epochs need tmin < 0 < tmax (a baseline before the onset), got {self.tmin}, {self.tmax}")
        if not 0 <= self.l_freq < self.h_freq or self.sfreq <= 0 or self.clamp <= 0 or self.image_size < 1:
            raise DataError(f"need 0 <= l_freq < h_freq, sfreq > 0, clamp > 0, image_size >= 1; got l_freq "
                            f"{self.l_freq}, h_freq {self.h_freq}, sfreq {self.sfreq}, clamp {self.clamp}, "
                            f"image_size {self.image_size}")
        if self.image_trigger < 0:
            raise DataError(f"image_trigger must be >= 0 (0: no check), got {self.image_trigger}")
        self.drop_channels = [str(c) for c in self.drop_channels]

    def run_settings(self) -> dict:
        """What makes a prepared run (the image size only matters when the runs are assembled)."""
        return {k: v for k, v in asdict(self).items() if k != "image_size"}


def subject_name(subject: str | int) -> str:
    """``sub-BIGMEG1`` from ``1``, ``BIGMEG1`` or ``sub-BIGMEG1``."""
    m = re.fullmatch(r"(?:sub-)?(?:BIGMEG)?0*(\d+)", str(subject))
    if not m:
        raise DataError(f"THINGS-MEG subject must be 1..4, BIGMEG1 or sub-BIGMEG1, got {subject!r}")
    return f"sub-BIGMEG{int(m.group(1))}"


def find_runs(root: Path, subject: str) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"--root {root} is not a folder (the THINGS-MEG BIDS root)")
    runs = sorted(p for p in (root / subject).glob("ses-*/meg/*_task-main_run-*_meg.*") if p.suffix in (".fif", ".ds"))
    if not runs:
        raise DataError(f"{root / subject}: no recordings (expected ses-*/meg/*_task-main_run-*_meg.ds or .fif)")
    return runs


def run_stem(run: Path) -> str:
    return run.name.rsplit("_meg", 1)[0]


def _float(value: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number") from None
    if not np.isfinite(out):
        raise DataError(f"{where}: {value!r} is not a finite number")
    return out


def read_events(run: Path) -> list[dict]:
    """Every row of ``run``'s events.tsv (catch trials included, in order), the onsets checked as numbers."""
    tsv = run.with_name(run_stem(run) + "_events.tsv")
    if not tsv.is_file():
        raise DataError(f"{tsv} is missing: every recording needs its events.tsv")
    try:
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{tsv}: not a tab-separated text file ({error_summary(e)})") from None
    need = {"onset", "trial_type"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{tsv}: columns {sorted(rows[0]) if rows else []}; expected at least {sorted(need)} "
                        "(the release's onset, duration, trial_type, things_category_nr, value, sample)")
    for i, r in enumerate(rows):
        r["onset"] = _float(r["onset"], f"{tsv} row {i + 2}, column onset")
    if not any(r["trial_type"] in IMAGE_TRIALS for r in rows):
        raise DataError(f"{tsv}: no image onsets (no trial_type exp or test): a recording without the expected "
                        "stimulus events")
    return rows


def read_sample_attributes(root: Path, subject: str) -> dict[tuple[int, int], list[dict]] | None:
    """``sourcedata/sample_attributes_P<n>.csv`` by (session_nr, run_nr), rows in file order; None if absent."""
    path = root / "sourcedata" / f"sample_attributes_P{subject.removeprefix('sub-BIGMEG')}.csv"
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a CSV file ({error_summary(e)})") from None
    need = {"trial_type", "session_nr", "run_nr", "image_path"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{path}: columns {sorted(rows[0]) if rows else []}; expected at least {sorted(need)}")
    out: dict[tuple[int, int], list[dict]] = {}
    for i, r in enumerate(rows):
        key = (int(_float(r["session_nr"], f"{path} row {i + 2}, session_nr")),
               int(_float(r["run_nr"], f"{path} row {i + 2}, run_nr")))
        out.setdefault(key, []).append(r)
    return out


def image_paths(run: Path, events: list[dict], attributes) -> tuple[list[str | None], int]:
    """The image path of every events.tsv row (None for catch) and the number of value / things_image_nr
    disagreements, from the sample attributes (or an image_path column of events.tsv)."""
    import mne_bids

    if attributes is None:
        if "image_path" not in events[0]:
            raise DataError(f"{run.name}: no image paths: {run.parents[3] / 'sourcedata'} has no "
                            "sample_attributes_P<n>.csv and events.tsv has no image_path column")
        return [r["image_path"] if r["trial_type"] in IMAGE_TRIALS else None for r in events], 0
    bp = mne_bids.get_bids_path_from_fname(run)
    key = (int(bp.session or 1), int(bp.run or 1))
    rows = attributes.get(key, [])
    if len(rows) != len(events):
        raise DataError(f"{run.name}: events.tsv has {len(events)} rows but sample_attributes has {len(rows)} for "
                        f"session_nr {key[0]}, run_nr {key[1]}")
    for i, (e, a) in enumerate(zip(events, rows)):
        if e["trial_type"] != a["trial_type"]:
            raise DataError(f"{run.name}: row {i + 1} is {e['trial_type']!r} in events.tsv but {a['trial_type']!r} in "
                            "sample_attributes: the two files do not describe the same trials")
    mismatches = sum(1 for e, a in zip(events, rows) if e["trial_type"] in IMAGE_TRIALS and "value" in e
                     and "things_image_nr" in a and e["value"].strip() != a["things_image_nr"].strip())
    return [a["image_path"] if a["trial_type"] in IMAGE_TRIALS else None for a in rows], mismatches


def restore_channel_types(raw, own_info) -> list[str]:
    """Give the channels mne-bids read as ``misc`` (channels.tsv types it does not map, e.g. the release's OTHER
    sensors and MISC trigger) the kind, coil, unit and position the recording itself gives them; returns their
    names."""
    from mne.io.constants import FIFF

    own = {ch["ch_name"]: ch for ch in own_info["chs"]}
    restored = []
    for ch in raw.info["chs"]:
        o = own.get(ch["ch_name"])
        if o is None or ch["kind"] != FIFF.FIFFV_MISC_CH or o["kind"] == FIFF.FIFFV_MISC_CH:
            continue
        for key in ("kind", "coil_type", "unit", "unit_mul", "coord_frame"):
            ch[key] = o[key]
        ch["loc"] = o["loc"].copy()
        restored.append(ch["ch_name"])
    return restored


def read_recording(run: Path):
    """(raw through mne-bids with the recording's own channel types restored, names restored)."""
    import mne
    import mne_bids

    try:
        bp = mne_bids.get_bids_path_from_fname(run)
        raw = mne_bids.read_raw_bids(bp, verbose="error")
        own = mne.io.read_raw(run, preload=False, verbose="error").info
        restored = restore_channel_types(raw, own)
        raw.load_data(verbose="error")
    except Exception as e:  # noqa: BLE001 - truncated or foreign files raise many error types inside MNE
        raise DataError(f"{run}: not a recording MNE-Python / mne-bids read ({error_summary(e)})") from None
    return raw, restored


def check_triggers(raw, events: list[dict], run: Path, s: MEGSettings) -> None:
    import mne

    if not s.image_trigger or s.trigger_channel not in raw.ch_names:
        return
    found = mne.find_events(raw, stim_channel=s.trigger_channel, initial_event=True, shortest_event=1,
                            verbose="error")
    n = int((found[:, 2] == s.image_trigger).sum())
    if n != len(events):
        raise DataError(f"{run.name}: {s.trigger_channel} has {n} events of value {s.image_trigger} but events.tsv "
                        f"{len(events)} rows (one per trial, catch trials included); set the image trigger "
                        "(--image-trigger, 0: no check) or check the files")


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
        from mindvis.data.meeg import preprocess_window, window_bounds

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


class ImageFinder:
    """Finds a sample-attributes ``image_path``: under ``images`` at the path, as ``<concept>/<file>``, or by file
    name anywhere under it; else under ``<root>/stimuli``."""

    def __init__(self, root: Path, images: Path | None):
        self.root, self.images, self._index = root, images, None

    def __call__(self, rel: str) -> Path | None:
        name = Path(rel).name
        bases = [self.images] if self.images else []
        for base in bases + [self.root / "stimuli", self.root]:
            if (base / rel).is_file():
                return base / rel
        if self.images:
            p = self.images / concept_of(rel) / name
            if p.is_file():
                return p
            if self._index is None:
                self._index = {}
                for p in sorted(self.images.rglob("*")):
                    if p.is_file():
                        self._index.setdefault(p.name, p)
            return self._index.get(name)
        return None


def _assemble(root: Path, subject: str, runs: list[Path], parts: Path, out: Path, s: MEGSettings,
              images: str | Path | None) -> Path:
    from PIL import Image

    from mindvis.models.brain_module import normalise_positions

    records = [item_record(parts / run_stem(r)) for r in runs]
    common = [c for c in records[0]["ch_names"] if all(c in rec["ch_names"] for rec in records)]
    if not common:
        raise DataError(f"{subject}: no MEG sensor is good in every run")
    left_out = sorted({c for rec in records for c in rec["ch_names"]} - set(common))
    xs, rows, counts = [], [], {}
    for r, rec in zip(runs, records):
        folder = parts / run_stem(r)
        x = np.load(folder / "epochs.npy")
        xs.append(x[:, [rec["ch_names"].index(c) for c in common]])
        for e in json.loads((folder / "events.json").read_text()):
            image = e["image_path"]
            counts[image] = counts.get(image, 0) + 1
            rows.append({"trial": len(rows), "run": run_stem(r), "onset": e["onset"], "image": image,
                         "concept": concept_of(image), "split": "test" if e["trial_type"] == "test" else "train",
                         "repetition": counts[image] - 1})
    x = np.concatenate(xs)
    train = np.array([r["split"] == "train" for r in rows])
    ref = x[train] if train.any() else x
    median = np.median(ref, axis=(0, 2))
    q75, q25 = np.percentile(ref, [75, 25], axis=(0, 2))
    iqr = np.maximum(q75 - q25, 1e-30)
    names = sorted(counts)
    find = ImageFinder(root, Path(images) if images else None)
    found = {n: find(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise DataError(f"{len(missing)} of {len(names)} images not found, e.g. {missing[0]} (sample attributes "
                        f"image_path): give --images, the THINGS images (<concept>/<file>.jpg), or put them under "
                        f"{root / 'stimuli'}")
    imgs = []
    for n in names:
        try:
            with Image.open(found[n]) as im:
                imgs.append(np.asarray(im.convert("RGB").resize((s.image_size, s.image_size), Image.BICUBIC)))
        except OSError as e:
            raise DataError(f"{found[n]}: not an image PIL reads ({error_summary(e)})") from None

    def write_trials(tmp: Path):
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=x.shape)
        arr[:] = robust_scale(x, median, iqr, s.clamp)
        arr.flush()
        del arr

    def write_rows(tmp: Path):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "trials.npy", write_trials)
    atomic_write(out / "trials.csv", write_rows)
    atomic_write(out / f"images_{s.image_size}.npy", lambda tmp: np.save(open(tmp, "wb"), np.stack(imgs)))
    (out / "image_ids.json").write_text(json.dumps(names))
    first = records[0]
    layout = np.array([[np.nan, np.nan] if p is None else p for p in
                       (first["layout"][first["ch_names"].index(c)] for c in common)], float)
    layout = normalise_positions(layout)  # over the channels kept
    extra = {"ch_names": common, "layout": [None if not np.isfinite(p).all() else [float(v) for v in p] for p in layout],
             "times": first["times"], "raw_sfreq": first["raw_sfreq"], "robust_median": median.tolist(),
             "robust_iqr": iqr.tolist(),
             "channels": {"bad_in_channels_tsv": sorted({c for rec in records for c in rec["bad_channels"]}),
                          "dropped": sorted({c for rec in records for c in rec["dropped_channels"]}),
                          "missing_or_bad_in_some_run": left_out, "reference_sensors_left_out":
                          max(rec["reference_sensors"] for rec in records),
                          "types_restored_from_the_recording": max(rec["restored_types"] for rec in records)},
             "value_mismatches": sum(rec["value_mismatches"] for rec in records),
             "catch_trials_dropped": sum(rec["catch_trials"] for rec in records)}
    source = root / "meta.json"  # a synthetic release records its world (for the world's embedding space)
    release = json.loads(source.read_text()) if source.is_file() else {}
    if release.get("generator") == SYNTHETIC_GENERATOR:
        extra["synthetic_world"] = release["config"]
    write_meta(out, "things-meg", {"root": str(root), "runs": [r.name for r in runs],
                                   "images": str(images) if images else str(root / "stimuli")},
               {subject: {"trials": len(x)}}, {**asdict(s), "subject": subject}, extra)
    shutil.rmtree(parts)
    return out
