"""THINGS-MEG (Hebart et al. 2023, OpenNeuro ds004212), one subject, from the BIDS release to epoched trials.

Read (under ``--root``): ``sub-BIGMEG<n>/ses-*/meg/*_task-main_run-*_meg.{fif,ds}`` (any format ``mne.io.read_raw``
reads; the release is CTF ``.ds``), each with its ``*_events.tsv`` (``onset`` in seconds, ``trial_type`` exp /
test / catch, ``image_path`` relative to the root or to ``stimuli/``), and the images.

Per run, with MNE-Python and Benchetrit et al. 2024's settings as defaults: MEG channels; band-pass ``l_freq`` -
``h_freq`` Hz; epochs from ``tmin`` to ``tmax`` s around every exp / test image onset; baseline correction on the
pre-stimulus part; resampling to ``sfreq`` Hz. With ``filtering="window"`` each epoch is processed alone instead,
exactly as ``mindvis-stream`` processes a live window (no high-pass: the baseline takes its place). Then over all
runs, per channel: robust scaling (median and interquartile range of the training trials) and clamping to
+-``clamp``. Each run is prepared into ``runs/`` and renamed into place when complete, so an interrupted preparation
resumes; the runs are removed once assembled.

Written to ``--out``: ``trials.npy`` (trials x channels x times, float32, memory-mappable), ``trials.csv`` (trial,
run, onset, image, concept, split (train / test), repetition), ``images_<size>.npy`` with ``image_ids.json``, and
``meta.json`` (channel names, 3-D positions and their 2-D layout, times, settings, the robust scaler's medians and
interquartile ranges).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError
from mindvis.data.meeg import robust_scale, sensor_layout
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

    def __post_init__(self):
        if self.filtering not in FILTERING:
            raise DataError(f"filtering must be one of {FILTERING}, got {self.filtering!r}")
        if not self.tmin < 0 < self.tmax:
            raise DataError(f"epochs need tmin < 0 < tmax (a baseline before the onset), got {self.tmin}, {self.tmax}")


def subject_name(subject: str | int) -> str:
    """``sub-BIGMEG1`` from ``1``, ``BIGMEG1`` or ``sub-BIGMEG1``."""
    m = re.fullmatch(r"(?:sub-)?(?:BIGMEG)?0*(\d+)", str(subject))
    if not m:
        raise DataError(f"THINGS-MEG subject must be 1..4, BIGMEG1 or sub-BIGMEG1, got {subject!r}")
    return f"sub-BIGMEG{int(m.group(1))}"


def find_runs(root: Path, subject: str) -> list[Path]:
    runs = sorted(p for p in (root / subject).glob("ses-*/meg/*_task-main_run-*_meg.*") if p.suffix in (".fif", ".ds"))
    if not runs:
        raise DataError(f"{root / subject}: no recordings (expected ses-*/meg/*_task-main_run-*_meg.fif or .ds)")
    return runs


def read_events(run: Path) -> list[dict]:
    """The image onsets (trial_type exp / test) of ``run``'s events.tsv."""
    tsv = run.with_name(run.name.rsplit("_meg", 1)[0] + "_events.tsv")
    if not tsv.is_file():
        raise DataError(f"{tsv} is missing: every recording needs its events.tsv")
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    need = {"onset", "trial_type", "image_path"}
    if rows and not need <= set(rows[0]):
        raise DataError(f"{tsv}: columns {sorted(rows[0])}; expected at least {sorted(need)}")
    images = [r for r in rows if r["trial_type"] in IMAGE_TRIALS]
    if not images:
        raise DataError(f"{tsv}: no image onsets (no trial_type exp or test): a recording without the expected "
                        "stimulus events")
    return images


def _prepare_run(run: Path, s: MEGSettings, sfreq_seen: dict) -> tuple[np.ndarray, list[dict], dict]:
    import mne

    raw = mne.io.read_raw(run, preload=True, verbose="error")
    rate = float(raw.info["sfreq"])
    first = sfreq_seen.setdefault("sfreq", (rate, run.name))
    if rate != first[0]:
        raise DataError(f"{run.name} is sampled at {rate:g} Hz but {first[1]} at {first[0]:g} Hz: sampling rates "
                        "differ between runs")
    events = read_events(run)
    stim = mne.pick_types(raw.info, meg=False, stim=True)
    if len(stim) and len(mne.find_events(raw, stim_channel=raw.ch_names[stim[0]], verbose="error")) == 0:
        raise DataError(f"{run.name}: the trigger channel {raw.ch_names[stim[0]]} has no events")
    raw.pick("meg", exclude="bads")
    x = raw.get_data()
    bad = ~np.isfinite(x)
    if bad.any():
        t = np.flatnonzero(bad.any(0))[0] / rate
        raise DataError(f"{run.name}: NaN/Inf in the recording from {t:.3f} s (channel "
                        f"{raw.ch_names[int(np.flatnonzero(bad[:, int(t * rate)])[0])]})")
    positions = np.array([ch["loc"][:3] for ch in raw.info["chs"]])
    sensor_layout(positions)  # raises when positions are missing
    samples = np.round(np.array([float(e["onset"]) for e in events]) * rate).astype(int) + raw.first_samp
    if s.filtering == "window":
        from mindvis.data.meeg import preprocess_window, window_bounds

        out = []
        for i, onset in enumerate(samples - raw.first_samp):
            a, b = window_bounds(int(onset), rate, s.tmin, s.tmax)
            if a < 0 or b > x.shape[1]:
                raise DataError(f"{run.name}: the epoch at onset {events[i]['onset']} s runs past the recording's edges")
            out.append(preprocess_window(x[:, a:b], rate, s.tmin, s.h_freq, s.sfreq))
        n = out[0].shape[-1]
        times = (s.tmin + np.arange(n) / s.sfreq).tolist()
        return np.stack(out).astype(np.float32), events, {"ch_names": list(raw.ch_names),
                                                           "positions": positions.tolist(), "times": times}
    raw.filter(s.l_freq, s.h_freq, verbose="error")
    ev = np.stack([samples, np.zeros_like(samples), np.ones_like(samples)], 1)
    epochs = mne.Epochs(raw, ev, tmin=s.tmin, tmax=s.tmax, baseline=(s.tmin, 0), preload=True, reject=None,
                        event_repeated="error", verbose="error")
    if len(epochs) != len(events):
        kept = set(epochs.selection.tolist())
        lost = [events[i]["onset"] for i in range(len(events)) if i not in kept]
        raise DataError(f"{run.name}: epochs at onsets {lost[:3]} s run past the recording's edges")
    epochs.resample(s.sfreq, verbose="error")
    info = {"ch_names": list(raw.ch_names), "positions": positions.tolist(), "times": epochs.times.tolist()}
    return epochs.get_data().astype(np.float32), events, info


def prepare_things_meg(root: str | Path, subject: str | int, out: str | Path, settings: MEGSettings | None = None,
                       progress=None) -> Path:
    """Epoch one subject's runs into ``out`` (see the module docstring); resumable per run."""
    s = settings or MEGSettings()
    root, out = Path(root), Path(out)
    subject = subject_name(subject)
    runs = find_runs(root, subject)
    meta_file = out / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("settings") == {**asdict(s), "subject": subject}:
        return out
    parts = out / "runs"
    parts.mkdir(parents=True, exist_ok=True)
    seen: dict = {}
    bar = progress(runs, desc=f"THINGS-MEG {subject} runs") if progress else runs
    for run in bar:
        folder = parts / run.name.rsplit("_meg", 1)[0]
        if done(folder):
            seen.setdefault("sfreq", (item_record(folder)["raw_sfreq"], run.name))
            continue

        def fill(tmp: Path, run=run):
            x, events, info = _prepare_run(run, s, seen)
            np.save(tmp / "epochs.npy", x)
            (tmp / "events.json").write_text(json.dumps(events))
            return {**info, "raw_sfreq": seen["sfreq"][0], "trials": len(x)}

        write_item(folder, fill)
    return _assemble(root, subject, runs, parts, out, s)


def _assemble(root: Path, subject: str, runs: list[Path], parts: Path, out: Path, s: MEGSettings) -> Path:
    from PIL import Image

    records = [item_record(parts / r.name.rsplit("_meg", 1)[0]) for r in runs]
    for r, rec in zip(runs[1:], records[1:]):
        if rec["ch_names"] != records[0]["ch_names"]:
            raise DataError(f"{r.name} has other MEG channels than {runs[0].name}")
    xs, rows, counts = [], [], {}
    for r, rec in zip(runs, records):
        folder = parts / r.name.rsplit("_meg", 1)[0]
        xs.append(np.load(folder / "epochs.npy"))
        for e in json.loads((folder / "events.json").read_text()):
            image = e["image_path"]
            counts[image] = counts.get(image, 0) + 1
            rows.append({"trial": len(rows), "run": r.name.rsplit("_meg", 1)[0], "onset": e["onset"], "image": image,
                         "concept": Path(image).parent.name, "split": "test" if e["trial_type"] == "test" else "train",
                         "repetition": counts[image] - 1})
    x = np.concatenate(xs)
    train = np.array([r["split"] == "train" for r in rows])
    ref = x[train] if train.any() else x
    median = np.median(ref, axis=(0, 2))
    q75, q25 = np.percentile(ref, [75, 25], axis=(0, 2))
    iqr = np.maximum(q75 - q25, 1e-30)

    def write_trials(tmp: Path):
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=x.shape)
        arr[:] = robust_scale(x, median, iqr, s.clamp)
        arr.flush()
        del arr

    atomic_write(out / "trials.npy", write_trials)
    def write_rows(tmp: Path):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "trials.csv", write_rows)
    names = sorted(counts)
    imgs = []
    for n in names:
        path = next((p for p in (root / n, root / "stimuli" / n) if p.is_file()), None)
        if path is None:
            raise DataError(f"image {n} (events.tsv image_path) is not under {root} or {root / 'stimuli'}")
        with Image.open(path) as im:
            imgs.append(np.asarray(im.convert("RGB").resize((s.image_size, s.image_size), Image.BICUBIC)))
    atomic_write(out / f"images_{s.image_size}.npy", lambda tmp: np.save(open(tmp, "wb"), np.stack(imgs)))
    (out / "image_ids.json").write_text(json.dumps(names))
    positions = np.array(records[0]["positions"])
    extra = {"ch_names": records[0]["ch_names"], "positions": positions.tolist(),
             "layout": sensor_layout(positions).tolist(), "times": records[0]["times"],
             "raw_sfreq": records[0]["raw_sfreq"], "robust_median": median.tolist(), "robust_iqr": iqr.tolist()}
    source = root / "meta.json"  # a synthetic release records its world (for the world's embedding space)
    release = json.loads(source.read_text()) if source.is_file() else {}
    if release.get("generator") == SYNTHETIC_GENERATOR:
        extra["synthetic_world"] = release["config"]
    write_meta(out, "things-meg", {"root": str(root), "runs": [r.name for r in runs]}, {subject: {"trials": len(x)}},
               {**asdict(s), "subject": subject}, extra)
    shutil.rmtree(parts)
    return out
