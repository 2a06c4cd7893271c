"""Reading the THINGS-MEG release: a subject's runs, each run's events.tsv, the sample attributes (the image of every
trial), the recording through mne-bids with the channel types the recording gives, the trigger check, and finding the
images (see :mod:`mindvis.data_prep.things_meg` for what the release holds)."""
from __future__ import annotations

import csv
import re
from pathlib import Path


from mindvis.data.events_tsv import finite_number, read_events_tsv
from mindvis.data.fmri import DataError, error_summary
from mindvis.data.meeg import concept_of

from .things_meg_settings import IMAGE_TRIALS, MEGSettings


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


def read_events(run: Path) -> list[dict]:
    """Every row of ``run``'s events.tsv (catch trials included, in order), the onsets checked as numbers."""
    tsv = run.with_name(run_stem(run) + "_events.tsv")
    if not tsv.is_file():
        raise DataError(f"{tsv} is missing: every recording needs its events.tsv")
    rows = read_events_tsv(tsv, columns_hint=" (the release's onset, duration, trial_type, things_category_nr, value, "
                                             "sample)")
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
        key = (int(finite_number(r["session_nr"], f"{path} row {i + 2}, session_nr")),
               int(finite_number(r["run_nr"], f"{path} row {i + 2}, run_nr")))
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
