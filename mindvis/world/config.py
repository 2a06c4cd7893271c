"""Settings of the synthetic world: its size and noise, and the named presets of fMRI devices and release sizes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

RESPONSES = ("css", "linear")
#: single-trial variance SNR and test repetitions of the fMRI the study compares. 7T: NSD's betas (1.8 mm, b3), whose
#: noise-ceiling SNR (signal sd / noise sd) in nsdgeneral is of the order of 0.5 -> variance 0.25; three repetitions
#: per image. 3T: GOD (Horikawa & Kamitani 2017; 3-mm voxels, one 9-s block per training image), assumed at half
#: NSD's noise-ceiling SNR -> variance ~0.06; 35 test repetitions. Orders of magnitude, not fits to either release.
DEVICE_PRESETS = {"7t": {"snr": 0.25, "test_repeats": 3}, "3t": {"snr": 0.06, "test_repeats": 35}}
#: world sizes of the releases. god: GOD's training set (1,200 images, 8 of each of 150 classes) and test set (50
#: images of 50 other classes), and a visual cortex of GOD's order (subject 3's VC: 4,643 voxels; split over the areas
#: here by roughly decreasing size from V1 to PPA, not from the release's masks)
WORLD_PRESETS = {"god": {"n_train_classes": 150, "images_per_class": 8, "n_test_classes": 50,
                         "god_voxels": [1000, 900, 800, 600, 600, 400, 340]}}


@dataclass
class SyntheticWorldConfig:
    """Size and noise of the synthetic world. The defaults run in seconds on two cores."""

    seed: int = 0
    image_size: int = 256
    grid: int = 32
    n_train_classes: int = 50
    images_per_class: int = 8
    n_test_classes: int = 50
    category_dim: int = 16
    # HCP-like resting state
    hcp_subjects: int = 12
    hcp_frames: int = 1200
    hcp_voxels: list[int] = field(default_factory=lambda: [320, 256, 192, 128])  # V1..V4
    rest_tau_s: float = 4.0
    # GOD-like task subjects
    god_subjects: int = 1
    god_voxels: list[int] = field(default_factory=lambda: [300, 240, 180, 120, 100, 60, 60])  # TASK_AREAS
    god_other_voxels: int = 40
    test_repeats: int = 5
    # BOLD5000-like subjects
    bold5000_subjects: int = 1
    bold5000_train_images: int = 300
    bold5000_test_images: int = 30
    bold5000_test_repeats: int = 4
    bold5000_voxels: list[int] = field(default_factory=lambda: [200, 120, 60, 60, 40])  # BOLD5000_ROIS per hemisphere
    # NSD-like subjects (750 trials per session, each image three times; the shared images come first)
    nsd_subjects: int = 1
    nsd_sessions: int = 2
    nsd_shared: int = 50
    nsd_volume: list[int] = field(default_factory=lambda: [12, 14, 12])  # the betas' grid (X, Y, Z)
    nsd_voxels: list[int] = field(default_factory=lambda: [120, 100, 80, 60, 60, 40, 40])  # TASK_AREAS in nsdgeneral
    nsd_session_drift: float = 0.5  # std of the per-session voxel offsets (gains vary by the same fraction)
    # MEG / EEG (THINGS-MEG and THINGS-EEG2 layouts; see mindvis.world.meeg): the GOD-like images, training
    # images once (EEG2: eeg_train_repeats times), test images meeg_test_repeats times (THINGS-MEG 12, EEG2 80)
    meeg_subjects: int = 1
    meeg_test_repeats: int = 4
    meeg_sources_per_area: int = 4
    meg_sensors: int = 64  # THINGS-MEG: 272 CTF axial gradiometers at 1200 Hz; fewer and slower here
    meg_sfreq: float = 300.0
    meg_runs: int = 2
    meg_snr: float = 0.1  # single-trial evoked variance over noise variance (sensors, first 500 ms)
    eeg_train_repeats: int = 2  # THINGS-EEG2: 4
    eeg_snr: float = 0.05
    # voxel responses (see mindvis.world): "css" (rectify, normalise, compress) or "linear"
    response: str = "css"
    response_floor: float = 0.3  # fraction of stimuli below a voxel's rectification threshold
    normalisation_width: float = 6.0  # voxels on the sheet in the normalisation pool (Gaussian sd)
    # measurement
    snr: float = 1.0
    shared_noise: float = 0.3  # fraction of the noise variance common to all voxels through a few sources
    noise_factors: int = 4
    subject_variability: float = 0.3

    def fingerprint(self) -> str:
        """A short hash of the settings, naming the cache folder of this world."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def image_settings(self) -> dict:
        """The settings that decide the classes and their renders. Brains and noise leave them unchanged, so
        what is trained on images only (the prior, the classifier) is keyed by these."""
        return {k: getattr(self, k) for k in ("seed", "image_size", "n_train_classes", "n_test_classes")}


def describe_devices() -> str:
    """``DEVICE_PRESETS`` in words, for --help: ``3t: snr=0.06, test_repeats=35; 7t: ...``."""
    return "; ".join(f"{k}: {', '.join(f'{a}={b}' for a, b in v.items())}" for k, v in sorted(DEVICE_PRESETS.items()))


def device_overrides(device: str | None = None, world: str | None = None, prefix: str = "") -> list[str]:
    """``key=value`` overrides of the world's settings for a ``DEVICE_PRESETS`` and a ``WORLD_PRESETS`` name, keys
    under ``prefix``."""
    out = []
    for name, presets, what in ((device, DEVICE_PRESETS, "device"), (world, WORLD_PRESETS, "world")):
        if name is None:
            continue
        if name not in presets:
            raise ValueError(f"unknown {what} preset {name!r}; choose from {sorted(presets)}")
        out += [f"{prefix}{k}={v}".replace(" ", "") for k, v in presets[name].items()]
    return out
