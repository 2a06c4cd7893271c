"""Synthetic MEG and EEG from the synthetic world's visual cortex, written as THINGS-MEG and THINGS-EEG2 releases.

The same images and the same encoding model as the fMRI world (:mod:`mindvis.world`): a subject's voxel
responses to an image, averaged over contiguous pieces of each visual area's sheet, are the amplitudes of
``sources_per_area`` current dipoles per area. Each area responds with its own time course after image onset, a
gamma-shaped kernel that peaks later and lasts longer from V1 to PPA (``AREA_TIMING``: peaks near 100 ms in V1 and
near 200 ms in the ventral areas, the order of the visual evoked response and of MEG decoding's time course).
Every source also carries an image-independent onset response. Dipoles sit at occipito-temporal positions with
random orientations; their fields reach the sensors through the potential of a current dipole in a homogeneous
medium ((p . r) / |r|^3: a stand-in for a head model, the same form for MEG and EEG). Sensor noise: white noise,
background 1/f activity and an alpha rhythm (around 10 Hz) from posterior sources, at single-trial SNR ``snr``
(evoked-signal variance over noise variance, averaged over sensors and the first 500 ms).

Layouts:
* **THINGS-MEG** (OpenNeuro ds004212, BIDS), in the release's own layout (see
  :mod:`mindvis.world.writers.things_meg`): ``sub-BIGMEG<n>/ses-01/meg/*_task-main_run-<r>_meg.fif`` continuous
  recordings of CTF-like axial gradiometers (named and placed after MNE's CTF-275 layout) with CTF reference sensors
  and a compensation matrix, the trigger ``UPPT001`` (64 at every trial onset), ``*_channels.tsv`` typed as the release
  types them (sensors OTHER, trigger MISC) with one bad channel, ``*_events.tsv`` with the release's columns (no image
  paths), ``sourcedata/sample_attributes_P<n>.csv`` with the image of every trial, and the images under ``stimuli/``
  (the test images in one flat folder). Training images are shown once, the other images of the test concepts once,
  the test images ``meeg_test_repeats`` times, with catch trials, in a random order; stimulus-onset asynchrony
  1.5 +- 0.2 s as THINGS-MEG.
* **THINGS-EEG2** (Gifford et al. 2022): ``preprocessed_data/sub-XX/preprocessed_eeg_{training,test}.npy``, each a
  dict with ``preprocessed_eeg_data`` (images x repetitions x channels x times), ``ch_names`` (the release's 17
  occipito-parietal channels) and ``times`` (-0.2 to 0.79 s at 100 Hz), and ``image_set/{training,test}_images/
  <nnnnn_concept>/<concept>_<k>.jpg``, in the order of the data's first axis.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindvis.releases import standard_1020_positions

from .brain import TASK_AREAS

#: (peak latency s, time constant s) of each area's evoked response
AREA_TIMING = {"V1": (0.10, 0.020), "V2": (0.11, 0.024), "V3": (0.12, 0.028), "V4": (0.14, 0.035),
               "LOC": (0.17, 0.045), "FFA": (0.19, 0.055), "PPA": (0.20, 0.060)}
#: THINGS-EEG2's preprocessed channels
EEG2_CHANNELS = ("Pz", "P3", "P7", "O1", "Oz", "O2", "P4", "P8", "P1", "P5", "PO7", "PO3", "POz", "PO4", "PO8",
                 "P6", "P2")
MEG_TRIGGER = "UPPT001"
SOA_S, SOA_JITTER_S = 1.5, 0.2


def area_kernel(area: str, times: np.ndarray) -> np.ndarray:
    """Gamma-shaped response of ``area`` at ``times`` (s after onset), peak 1 at the area's latency."""
    peak, tau = AREA_TIMING[area]
    onset = peak - 2 * tau  # (t/tau)^2 exp(-t/tau) peaks at t = 2 tau
    t = np.clip(times - onset, 0, None) / tau
    return (t**2 * np.exp(-t)) / (4 * np.exp(-2))


def eeg2_positions() -> np.ndarray:
    """(17, 3) positions (m) of THINGS-EEG2's channels in MNE's standard 10-20 montage."""
    pos = standard_1020_positions()
    return np.stack([pos[c] for c in EEG2_CHANNELS])


@dataclass
class Sources:
    """Dipoles of one subject: their area, position (m) and orientation, and the lead field to the sensors."""

    areas: list[str]
    positions: np.ndarray  # (S, 3)
    gain: np.ndarray  # (channels, S), columns of unit norm


def make_sources(areas: list[str], per_area: int, sensors: np.ndarray, rng: np.random.Generator) -> Sources:
    """Dipoles behind the occipital pole (V1) moving forward and down along the ventral stream."""
    names, pos = [], []
    for k, area in enumerate(areas):
        for j in range(per_area):
            side = 1 if j % 2 else -1
            pos.append([side * (0.01 + 0.03 * rng.random()), -0.07 + 0.012 * k + 0.005 * rng.normal(),
                        0.01 - 0.006 * k + 0.005 * rng.normal()])
            names.append(area)
    pos = np.array(pos)
    orient = rng.normal(size=pos.shape)
    orient /= np.linalg.norm(orient, axis=1, keepdims=True)
    d = sensors[:, None, :] - pos[None]  # (C, S, 3)
    gain = np.einsum("csk,sk->cs", d, orient) / np.linalg.norm(d, axis=-1) ** 3
    return Sources(names, pos, gain / np.linalg.norm(gain, axis=0, keepdims=True))


def source_amplitudes(signal: np.ndarray, area_sizes: list[int], per_area: int) -> np.ndarray:
    """(N, V) voxel responses -> (N, A * per_area) dipole amplitudes: the mean of contiguous sheet pieces,
    unit variance over the images."""
    out, start = [], 0
    for n in area_sizes:
        for piece in np.array_split(np.arange(start, start + n), per_area):
            out.append(signal[:, piece].mean(1))
        start += n
    a = np.stack(out, 1)
    return (a - a.mean(0)) / (a.std(0) + 1e-8)


def evoked(amplitudes: np.ndarray, sources: Sources, times: np.ndarray, onset_weight: float = 1.0) -> np.ndarray:
    """(N, S) amplitudes -> (N, channels, T) noise-free sensor responses at ``times`` (s after onset)."""
    kernels = np.stack([area_kernel(a, times) for a in sources.areas])  # (S, T)
    src = (onset_weight + amplitudes)[:, :, None] * kernels[None]  # (N, S, T)
    return np.einsum("cs,nst->nct", sources.gain, src)


def background(n_times: int, sfreq: float, sources_gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(channels, n_times) background activity: 1/f sources anywhere plus a 10-Hz alpha rhythm whose amplitude
    waxes and wanes, from the posterior sources, and white sensor noise; unit variance per channel on average."""
    c, s = sources_gain.shape
    spec = np.fft.rfftfreq(n_times, 1 / sfreq)
    pink = np.fft.irfft(np.fft.rfft(rng.normal(size=(s, n_times)), axis=1) / np.sqrt(np.maximum(spec, 1.0)),
                        n=n_times, axis=1)
    t = np.arange(n_times) / sfreq
    envelope = 1 + 0.5 * np.sin(2 * np.pi * 0.1 * t + rng.uniform(0, 2 * np.pi))
    alpha = envelope * np.sin(2 * np.pi * rng.uniform(9, 11) * t + rng.uniform(0, 2 * np.pi, (s, 1)))
    brain = sources_gain @ (pink / pink.std() + 0.7 * alpha)
    out = brain / brain.std() + 0.5 * rng.normal(size=(c, n_times))
    return out / out.std()


def scale_to_snr(signal_var: float, snr: float) -> float:
    """Noise standard deviation that puts unit-variance noise at ``snr`` below a signal of variance ``signal_var``."""
    return float(np.sqrt(signal_var / snr))


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def meeg_sources(world, s: int, sensors: np.ndarray, rng: np.random.Generator, extra=None):
    """Subject ``s``'s dipoles for M/EEG (its visual cortex from its own stream) and their amplitudes for the
    GOD-like training then test images (then the ``extra`` (images, classes), if given): (Sources, (images, S)
    amplitudes, number of training images)."""
    train_imgs, train_cls, test_imgs, test_cls = world.god_stimuli()
    f_tr, e_tr = world.stimulus_features(train_imgs, train_cls)
    f_te, e_te = world.stimulus_features(test_imgs, test_cls)
    brain = world.task_brain(TASK_AREAS, world.cfg.god_voxels, 300 + s, f_tr, e_tr)
    sources = make_sources(list(brain.areas), world.cfg.meeg_sources_per_area, sensors, rng)
    signal = [brain.signal(f_tr, e_tr), brain.signal(f_te, e_te)]
    if extra is not None:
        signal.append(brain.signal(*world.stimulus_features(*extra)))
    signal = np.concatenate(signal)
    return sources, source_amplitudes(signal, brain.area_sizes, world.cfg.meeg_sources_per_area), len(f_tr)


#: the CTF system's reference sensors the synthetic THINGS-MEG carries (a few of the release's 28: 9 reference
#: magnetometers BG*/BP*/BR* and 19 reference gradiometers G*/P*/Q*/R*), as (name, MNE coil kind)
MEG_REFERENCES = (("BG1-1609", "mag"), ("BP1-1609", "mag"), ("BR1-1609", "mag"), ("G11-1609", "grad"),
                  ("P11-1609", "grad"), ("Q11-1609", "grad"))
#: the sensor Hebart et al. drop as broken (THINGS-data MEG/step1_preprocessing.py); the synthetic one is flat
MEG_BROKEN = "MRO11-1609"
CTF_SUFFIX = "-1609"  # the release's channel names end in the system's number (MLC11-1609)


def ctf_sensors(n: int) -> tuple[list[str], np.ndarray]:
    """``n`` sensor names of MNE's CTF-275 layout (evenly spaced in the layout's order, MRO11 among them) with the
    release's suffix, and (n, 3) positions (m) on a 12-cm sphere: the layout's 2-D map read as an azimuthal
    projection of the helmet (nose up, left on the left), so that the layout the decoder sees and the geometry the
    signals come from agree."""
    import mne

    layout = mne.channels.read_layout("CTF-275")
    bare = [name.split("-")[0] for name in layout.names]
    if not 1 <= n <= len(bare):
        raise ValueError(f"meg_sensors must be 1..{len(bare)} (the CTF-275 layout), got {n}")
    broken = bare.index(MEG_BROKEN.split("-")[0])
    others = [i for i in range(len(bare)) if i != broken]
    idx = sorted({others[int(round(k))] for k in np.linspace(0, len(others) - 1, n - 1)} | {broken}) if n > 1 else [broken]
    centre = layout.pos[:, :2] + layout.pos[:, 2:4] / 2
    xy = centre - centre.mean(0)
    xy /= np.linalg.norm(xy, axis=1).max()
    theta = 1.9 * np.linalg.norm(xy, axis=1)  # from the vertex to ~110 degrees at the layout's rim
    phi = np.arctan2(xy[:, 1], xy[:, 0])
    pos = 0.12 * np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1)
    return [bare[i] + CTF_SUFFIX for i in idx], pos[idx]
