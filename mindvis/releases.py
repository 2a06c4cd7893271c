"""What the readers of the releases (:mod:`mindvis.data`, :mod:`mindvis.data_prep`) and the synthetic world that
writes them (:mod:`mindvis.world`) agree on, kept in one low module so that neither imports the other."""
from __future__ import annotations

import numpy as np

#: BOLD5000's GLMsingle ROIs, per hemisphere (file name suffixes of the ROI betas)
BOLD5000_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")

#: the ``generator`` a synthetic release records in its ``meta.json`` (the world's module path when the mark was
#: chosen; kept so that the worlds already written and cached stay recognised and byte-identical)
SYNTHETIC_GENERATOR = "mindvis.data.synthetic"


def standard_1020_positions() -> dict[str, np.ndarray]:
    """Channel name -> 3-D position (m) of MNE's standard 10-20 montage (named colin27_1020 from MNE 1.13)."""
    import mne

    name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    return mne.channels.make_standard_montage(name).get_positions()["ch_pos"]
