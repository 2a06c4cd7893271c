"""BIDS ``events.tsv`` files as the M/EEG preparation and ``mindvis-stream`` read them: every row in order, the
onsets checked as finite numbers; a file that is not one is a one-line DataError naming it."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .fmri import DataError, error_summary


def finite_number(value: str, where: str) -> float:
    """``value`` as a float; a non-number or a non-finite one is a DataError naming ``where``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number") from None
    if not np.isfinite(out):
        raise DataError(f"{where}: {value!r} is not a finite number")
    return out


def read_events_tsv(path: str | Path, name: str | None = None, columns_hint: str = "") -> list[dict]:
    """Every row of an events.tsv (``onset`` as a float, the other columns as text). ``name`` is how errors call
    the file (default its path); ``columns_hint`` is added to the error for a file without onset and trial_type."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise DataError(f"{name} does not exist")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{name}: not a tab-separated text file ({error_summary(e)})") from None
    if not rows or not {"onset", "trial_type"} <= set(rows[0]):
        raise DataError(f"{name}: columns {sorted(rows[0]) if rows else []}; expected at least onset and "
                        f"trial_type{columns_hint}")
    for i, r in enumerate(rows):
        r["onset"] = finite_number(r["onset"], f"{name} row {i + 2}, column onset")
    return rows
