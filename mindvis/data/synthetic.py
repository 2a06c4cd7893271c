"""A synthetic brain world: images, a visual-cortex encoding model, and the files of HCP, GOD, BOLD5000 and NSD.

The model, in short:

* **Images** belong to classes. A class is a set of attributes: a shape (disc, square, triangle,
  ring, cross, bar), a foreground and a background colour, a grating orientation and spatial
  frequency, a size and a preferred position. An image of a class jitters position, size, colours,
  orientation and grating phase and adds pixel noise.
* **Features**: each image is summarised on a ``grid`` x ``grid`` map of low-level features:
  luminance, red-green and blue-yellow opponency, oriented energy at 0/45/90/135 degrees, and local
  contrast.
* **Voxels** live on a cortical sheet per area (V1, V2, V3, V4 and, for task subjects, LOC, FFA,
  PPA). Consecutive voxels have neighbouring receptive-field centres (a Hilbert curve over the
  visual field); receptive fields are Gaussian and grow from V1 to the higher areas and with
  eccentricity. Each voxel weights the RF-pooled features by a tuning vector that varies smoothly
  along the sheet, so neighbouring voxels are correlated. Higher areas add a category component: a
  fixed nonlinear embedding of the class attributes (invariant to the instance jitter) read out by
  smoothly varying voxel loadings; its weight grows from V1 (none) to PPA.
* **Response nonlinearity** (``response="css"``, the default; ``"linear"`` with ``shared_noise=0`` is the
  earlier versions' model: its task fMRI equals theirs to float32 rounding, its resting state draws its noise in
  another order): a voxel's linear drive is rectified (a fraction ``response_floor`` of stimuli leaves it
  at rest), divided by the activity of its neighbourhood on the sheet (divisive normalisation, Heeger 1992; the DN
  stage of Kay et al. 2013, PLoS Comput Biol) and compressed by a power law with an exponent below one that falls
  from V1 to the higher areas (compressive spatial summation, Kay et al. 2013, J Neurophysiol).
* **Measurement**: each voxel's signal is scaled to unit variance and noise at signal-to-noise ratio ``snr``
  (variance ratio) is added: per voxel, part of it smooth along the sheet, and a fraction ``shared_noise`` common
  to all voxels through ``noise_factors`` sources with smooth loadings (the shared fluctuations that GLMdenoise,
  used for NSD's betas, estimates from noise-pool voxels). ``DEVICE_PRESETS`` name the single-trial SNR and test
  repetitions of 3T (GOD-like) and 7T (NSD-like) fMRI.
* **NSD**: the subjects' images are shown three times each in a random order, 750 trials per session; voxels
  sit at the nsdgeneral positions of a small 1.8-mm volume (the rest of the volume is noise), and every
  session adds its own per-voxel offset and gain to the betas, which per-session z-scoring removes.
* **MEG / EEG** (:mod:`mindvis.data.synthetic_meeg`): the task subjects' voxel responses drive dipoles per
  visual area with area-specific time courses, seen through a lead field at MEG helmet or EEG 10-20 positions,
  written as THINGS-MEG (continuous FIF runs) and THINGS-EEG2 (preprocessed ``.npy``) releases.
* **Resting state** (HCP): spontaneous activity drives the same encoding model (RFs, tunings, nonlinearity and
  noise sources) with spatially
  smooth random feature maps and a random category vector that evolve as AR(1) processes (time
  constant ``rest_tau_s``), plus temporally autocorrelated noise and a global signal; TR 0.72 s.

All subjects draw their voxels from this one process (HCP subjects share a template and differ by
``subject_variability``), so what a model learns from the resting state transfers in kind, not
voxel by voxel, to the task subjects. Everything is seeded and deterministic.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..utils.io import atomic_dir

HCP_AREAS = ("V1", "V2", "V3", "V4")
TASK_AREAS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA")
BOLD5000_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")
N_FEATURES = 8
TR_SECONDS = 0.72
NSD_TRIALS_PER_SESSION = 750

# receptive-field size (fraction of the image width) and category weight per area
_RF_SIZE = {"V1": 0.04, "V2": 0.07, "V3": 0.10, "V4": 0.15, "LOC": 0.25, "FFA": 0.3, "PPA": 0.35,
            "EarlyVis": 0.06, "OPA": 0.25, "RSC": 0.35}
# compressive exponent per area: Kay et al. 2013 found it below 1 in every area and smaller (more compressive) in
# anterior areas; these values follow that ordering, they are not the paper's fits
_CSS_EXPONENT = {"V1": 0.5, "V2": 0.4, "V3": 0.35, "V4": 0.3, "LOC": 0.25, "FFA": 0.2, "PPA": 0.2,
                 "EarlyVis": 0.45, "OPA": 0.25, "RSC": 0.2}
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
_CATEGORY_WEIGHT = {"V1": 0.0, "V2": 0.1, "V3": 0.25, "V4": 0.45, "LOC": 0.65, "FFA": 0.75, "PPA": 0.75,
                    "EarlyVis": 0.05, "OPA": 0.6, "RSC": 0.7}


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
    # MEG / EEG (THINGS-MEG and THINGS-EEG2 layouts; see mindvis.data.synthetic_meeg): the GOD-like images, training
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
    # voxel responses (see the module docstring): "css" (rectify, normalise, compress) or "linear"
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


# ---------------------------------------------------------------------------------------- images
def class_attributes(n_classes: int, rng: np.random.Generator) -> list[dict]:
    """Attributes of ``n_classes`` classes: shapes cycle, hues follow the golden ratio, the rest is random."""
    out = []
    for c in range(n_classes):
        hue = (0.618034 * c + rng.uniform(0, 0.05)) % 1.0
        out.append(dict(
            shape=int(c % len(SHAPES)),
            fg_hue=float(hue),
            fg_value=float(rng.uniform(0.6, 1.0)),
            bg_hue=float((hue + rng.uniform(0.25, 0.75)) % 1.0),
            bg_value=float(rng.uniform(0.1, 0.5)),
            orientation=float(rng.uniform(0, np.pi)),
            frequency=float(rng.choice([3.0, 6.0, 10.0])),
            size=float(rng.uniform(0.2, 0.35)),
            cx=float(rng.uniform(0.35, 0.65)),
            cy=float(rng.uniform(0.35, 0.65)),
        ))
    return out


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    name = SHAPES[shape]
    d = np.sqrt(u**2 + v**2)
    if name == "disc":
        return d < r
    if name == "square":
        return (np.abs(u) < r * 0.85) & (np.abs(v) < r * 0.85)
    if name == "triangle":
        return (v < r * 0.7) & (v > -r + 1.7 * np.abs(u))
    if name == "ring":
        return (d < r) & (d > r * 0.55)
    if name == "cross":
        return ((np.abs(u) < r * 0.3) | (np.abs(v) < r * 0.3)) & (np.abs(u) < r) & (np.abs(v) < r)
    return (np.abs(u) < r * 1.1) & (np.abs(v) < r * 0.35)  # bar


def render_image(attrs: dict, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One jittered instance of a class: (size, size, 3) uint8."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    cx = attrs["cx"] + rng.normal(0, 0.06)
    cy = attrs["cy"] + rng.normal(0, 0.06)
    r = attrs["size"] * rng.uniform(0.85, 1.15)
    theta = attrs["orientation"] + rng.normal(0, 0.12)
    # the shape turns with the grating, so orientation is a property of the whole object
    u0, v0 = xx - cx, yy - cy
    u = np.cos(theta) * u0 + np.sin(theta) * v0
    v = -np.sin(theta) * u0 + np.cos(theta) * v0
    mask = _shape_mask(attrs["shape"], u, v, r)
    grating = np.sin(2 * np.pi * attrs["frequency"] * u / (2 * r) * 2 + rng.uniform(0, 2 * np.pi))
    fg = _hsv_to_rgb((attrs["fg_hue"] + rng.normal(0, 0.02)) % 1, 0.8, attrs["fg_value"])
    bg = _hsv_to_rgb((attrs["bg_hue"] + rng.normal(0, 0.02)) % 1, 0.5, attrs["bg_value"])
    shade = 1.0 + 0.15 * (yy - 0.5) * rng.normal()
    img = bg[None, None, :] * shade[..., None]
    img = np.where(mask[..., None], fg[None, None, :] * (0.75 + 0.25 * grating[..., None]), img)
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def image_features(images: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, grid*grid, 8) low-level feature maps (see module docstring)."""
    x = images.astype(np.float32) / 255.0
    n, h, w, _ = x.shape
    x = x.reshape(n, grid, h // grid, grid, w // grid, 3).mean(axis=(2, 4))  # (N, G, G, 3)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = (r + g + b) / 3
    rg = r - g
    by = b - (r + g) / 2
    gy, gx = np.gradient(lum, axis=(1, 2))
    energies = [np.abs(np.cos(a) * gx + np.sin(a) * gy) for a in (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)]
    contrast = np.abs(lum - lum.mean(axis=(1, 2), keepdims=True))
    feats = np.stack([lum, rg, by, *energies, contrast], axis=-1)  # (N, G, G, 8)
    return feats.reshape(n, grid * grid, N_FEATURES)


def category_embedding(attrs: list[dict], dim: int, seed: int) -> np.ndarray:
    """(n_classes, dim) fixed nonlinear embedding of class attributes: the 'semantic' signal."""
    rng = np.random.default_rng(seed + 7919)
    a = np.array([[*np.eye(len(SHAPES))[c["shape"]], np.cos(2 * np.pi * c["fg_hue"]), np.sin(2 * np.pi * c["fg_hue"]),
                   c["fg_value"], np.cos(2 * c["orientation"]), np.sin(2 * c["orientation"]), c["frequency"] / 10,
                   c["size"] * 3, c["bg_value"]] for c in attrs])
    w1 = rng.normal(0, 1, (a.shape[1], 64))
    w2 = rng.normal(0, 1 / 8, (64, dim))
    e = np.tanh(a @ w1) @ w2
    return (e - e.mean(0)) / (e.std(0) + 1e-8)


# ---------------------------------------------------------------------------------------- brains
def _smooth_along(x: np.ndarray, width: float) -> np.ndarray:
    """Gaussian smoothing of (V, ...) along the voxel axis (the cortical sheet), variance-preserving
    for white input; edges are renormalised."""
    idx = np.arange(x.shape[0])
    k = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / width) ** 2)
    k[np.abs(idx[:, None] - idx[None, :]) > 3 * width] = 0
    k /= np.sqrt((k**2).sum(1, keepdims=True))
    return (k @ x.reshape(x.shape[0], -1)).reshape(x.shape)


def _hilbert_d2xy(order: int, d: np.ndarray) -> np.ndarray:
    """Points (x, y) in [0, 2**order)^2 at distances ``d`` along the Hilbert curve."""
    x = np.zeros_like(d)
    y = np.zeros_like(d)
    t = d.copy()
    s = 1
    while s < 2**order:
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        flip = (ry == 0) & (rx == 1)
        x = np.where(flip, s - 1 - x, x)
        y = np.where(flip, s - 1 - y, y)
        x, y = np.where(ry == 0, y, x), np.where(ry == 0, x, y)
        x, y = x + s * rx, y + s * ry
        t //= 4
        s *= 2
    return np.stack([x, y], axis=1)


def _sheet_centres(n: int, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """(n, 2) RF centres in [0, 1]^2 spread evenly along a Hilbert curve over the visual field, so that
    consecutive voxels (and so every patch of them) cover a compact piece of the field."""
    order = max(1, int(np.ceil(np.log2(np.sqrt(n)))))
    side = 2**order
    d = np.floor(np.arange(n) * (side * side) / n).astype(np.int64)
    pts = (_hilbert_d2xy(order, d) + 0.5) / side + rng.normal(0, jitter, (n, 2))
    return np.clip(pts, 0.02, 0.98)


def _pool_kernel(area_sizes, width: float) -> np.ndarray:
    """(V, V) Gaussian averaging kernel along the sheet within each area; rows sum to 1."""
    blocks, start, V = [], 0, sum(area_sizes)
    k = np.zeros((V, V), np.float32)
    for n in area_sizes:
        idx = np.arange(n)
        b = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / width) ** 2)
        k[start:start + n, start:start + n] = b / b.sum(1, keepdims=True)
        start += n
    return k


@dataclass
class Brain:
    """The encoding model of one subject: per voxel an RF, a feature tuning, a category loading, a response
    nonlinearity and a noise model."""

    areas: list[str]
    area_sizes: list[int]
    rf: np.ndarray  # (V, G*G) receptive fields, rows sum to 1
    tuning: np.ndarray  # (V, 8)
    loading: np.ndarray  # (V, K) category loadings, already weighted per area
    feature_weight: np.ndarray  # (V,) weight of the feature path
    noise_mix: np.ndarray  # (V,) fraction of noise that is smooth along the sheet
    exponent: np.ndarray  # (V,) compressive exponent of the css response
    noise_loading: np.ndarray  # (V, noise_factors) loadings of the shared noise sources, unit-norm rows
    response: str = "css"
    response_floor: float = 0.3
    normalisation_width: float = 6.0
    shared_noise: float = 0.0
    calib: dict | None = None  # per-voxel constants fixed by calibrate()

    @property
    def n_voxels(self) -> int:
        return self.rf.shape[0]

    def roi_slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for a, n in zip(self.areas, self.area_sizes):
            out[a] = slice(start, start + n)
            start += n
        return out

    def drive(self, feats: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Linear drive (N, V): RF-pooled features weighted by the tuning, plus the category read-out."""
        n = feats.shape[0]
        pooled = (self.rf @ feats.transpose(1, 0, 2).reshape(self.rf.shape[1], -1)).reshape(-1, n, N_FEATURES)
        feat_path = np.einsum("vnf,vf->nv", pooled, self.tuning)
        return self.feature_weight * feat_path + categories @ self.loading.T

    def _respond(self, d: np.ndarray, c: dict) -> np.ndarray:
        """css: rectify at the voxel's threshold, divide by the pool's activity plus the semi-saturation
        constant, compress with the voxel's exponent."""
        a = np.maximum((d - c["mean"]) / c["std"] - c["theta"], 0.0)
        pool = a @ self._kernel().T
        return (a / (c["sigma"] + pool)) ** self.exponent

    def _kernel(self) -> np.ndarray:
        if getattr(self, "_pool", None) is None:
            self._pool = _pool_kernel(self.area_sizes, self.normalisation_width)
        return self._pool

    def signal(self, feats: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Noise-free responses (N, V) to features (N, G*G, 8) and category vectors (N, K); unit variance
        on the calibration stimuli once calibrated."""
        if self.calib is None:
            raise RuntimeError("Brain.signal needs calibrate() first")
        s = self.drive(feats, categories)
        if self.response == "css":
            s = self._respond(s, self.calib)
        return ((s - self.calib["out_mean"]) / self.calib["out_std"]).astype(np.float32)

    def calibrate(self, feats: np.ndarray, categories: np.ndarray) -> None:
        """Fix each voxel's constants on reference stimuli: the drive's scale, the rectification threshold
        (the ``response_floor`` quantile), the semi-saturation constant (the pool's median activity) and the
        output's mean and scale (so that signal variance is 1)."""
        d = self.drive(feats, categories)
        c = {"mean": d.mean(0), "std": d.std(0) + 1e-6}
        out = d
        if self.response == "css":
            z = (d - c["mean"]) / c["std"]
            c["theta"] = np.quantile(z, self.response_floor, axis=0)
            pool = np.maximum(z - c["theta"], 0.0) @ self._kernel().T
            c["sigma"] = np.median(pool, axis=0) + 1e-3
            out = self._respond(d, c)
        c["out_mean"], c["out_std"] = out.mean(0), out.std(0) + 1e-6
        self.calib = c

    def noise(self, n: int, snr: float, rng: np.random.Generator) -> np.ndarray:
        """(n, V) measurement noise with variance 1/snr: per voxel, partly smooth along the sheet, and a
        ``shared_noise`` fraction common to all voxels through the shared sources."""
        white = rng.normal(0, 1, (n, self.n_voxels))
        smooth = _smooth_along(rng.normal(0, 1, (self.n_voxels, n)), 3.0).T
        mix = self.noise_mix
        out = np.sqrt(1 - mix) * white + np.sqrt(mix) * smooth
        if self.shared_noise > 0:
            shared = rng.normal(0, 1, (n, self.noise_loading.shape[1])) @ self.noise_loading.T
            out = np.sqrt(1 - self.shared_noise) * out + np.sqrt(self.shared_noise) * shared
        return (out / np.sqrt(snr)).astype(np.float32)


def make_brain(areas, sizes, grid: int, category_dim: int, rng: np.random.Generator,
               template: Brain | None = None, variability: float = 0.3,
               cfg: "SyntheticWorldConfig | None" = None) -> Brain:
    """Draw a subject's encoding model; with ``template``, perturb that one (HCP subjects share one).
    ``cfg`` gives the response and noise settings (the defaults of SyntheticWorldConfig without it)."""
    cfg = cfg or SyntheticWorldConfig()
    if cfg.response not in RESPONSES:
        raise ValueError(f"response must be one of {RESPONSES}, got {cfg.response!r}")
    if not 0 <= cfg.shared_noise < 1 or cfg.noise_factors < 1:
        raise ValueError(f"shared_noise must be in [0, 1) and noise_factors >= 1, got {cfg.shared_noise}, "
                         f"{cfg.noise_factors}")
    yy, xx = (np.mgrid[0:grid, 0:grid] + 0.5) / grid
    cells = np.stack([xx.ravel(), yy.ravel()], axis=1)  # (G*G, 2)
    rfs, tunings, loadings, fweights, exps = [], [], [], [], []
    for area, n in zip(areas, sizes):
        centres = _sheet_centres(n, rng, jitter=0.01)
        ecc = np.linalg.norm(centres - 0.5, axis=1)
        sigma = _RF_SIZE[area] * (1 + 1.5 * ecc) * rng.uniform(0.9, 1.1, n)
        d2 = ((centres[:, None, :] - cells[None, :, :]) ** 2).sum(-1)
        rf = np.exp(-0.5 * d2 / sigma[:, None] ** 2)
        rfs.append(rf / rf.sum(1, keepdims=True))
        tunings.append(_smooth_along(rng.normal(0, 1, (n, N_FEATURES)), 8.0))
        loadings.append(_smooth_along(rng.normal(0, 1, (n, category_dim)), 8.0) / np.sqrt(category_dim))
        cw = _CATEGORY_WEIGHT[area]
        loadings[-1] *= cw
        fweights.append(np.full(n, 1.0 - cw))
        exps.append(np.full(n, _CSS_EXPONENT[area]))
    rf, tuning, loading = np.concatenate(rfs), np.concatenate(tunings), np.concatenate(loadings)
    if template is not None:
        rf = template.rf
        tuning = np.sqrt(1 - variability**2) * template.tuning + variability * tuning
        loading = np.sqrt(1 - variability**2) * template.loading + variability * loading
    noise_mix = rng.uniform(0.3, 0.6, rf.shape[0])
    # drawn last, so that the task fMRI of response="linear", shared_noise=0 stays the earlier versions' (the HCP
    # subjects' generator goes on to the resting state, whose draws therefore moved)
    exponent = np.concatenate(exps) * np.exp(rng.normal(0, 0.2, rf.shape[0]))
    noise_loading = _smooth_along(rng.normal(0, 1, (rf.shape[0], cfg.noise_factors)), 20.0)
    noise_loading /= np.linalg.norm(noise_loading, axis=1, keepdims=True) + 1e-8
    return Brain(list(areas), list(sizes), rf, tuning, loading, np.concatenate(fweights), noise_mix,
                 exponent, noise_loading, cfg.response, cfg.response_floor, cfg.normalisation_width,
                 cfg.shared_noise)


def _smooth_field(shape, grid: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially smooth unit-variance Gaussian fields of shape (*shape, grid, grid) via FFT."""
    fy, fx = np.fft.fftfreq(grid), np.fft.rfftfreq(grid)
    filt = np.exp(-2 * (np.pi * width) ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2)).astype(np.float32)
    w = rng.standard_normal((*shape, grid, grid), dtype=np.float32)
    out = np.fft.irfft2(np.fft.rfft2(w) * filt, s=(grid, grid))
    return out / (out.std() + 1e-8)


def resting_state(brain: Brain, frames: int, cfg: SyntheticWorldConfig, rng: np.random.Generator,
                  feat_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(frames, V) float32 resting-state time series of one subject (see module docstring)."""
    phi = np.exp(-TR_SECONDS / cfg.rest_tau_s)
    g = cfg.grid
    innov = _smooth_field((frames, N_FEATURES), g, width=4.0, rng=rng)  # (T, F, G, G)
    cat_innov = rng.normal(0, 1, (frames, cfg.category_dim))
    noise = brain.noise(frames, cfg.snr, rng)
    feats = np.empty_like(innov)
    cats = np.empty_like(cat_innov)
    feats[0], cats[0], scale = innov[0], cat_innov[0], np.sqrt(1 - phi**2)
    for t in range(1, frames):  # AR(1), stationary unit variance
        feats[t] = phi * feats[t - 1] + scale * innov[t]
        cats[t] = phi * cats[t - 1] + scale * cat_innov[t]
    mean, std = feat_stats
    feats = feats.transpose(0, 2, 3, 1).reshape(frames, g * g, N_FEATURES) * std + mean
    # measurement noise is white in time; a slow global signal is shared by all voxels
    glob = np.convolve(rng.normal(0, 0.5, frames + 20), np.ones(20) / np.sqrt(20), mode="valid")[:frames]
    return (brain.signal(feats, cats) + noise + glob[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------- world
class SyntheticWorld:
    """Generates the synthetic images and subjects and writes them in the real releases' layouts."""

    def __init__(self, config: SyntheticWorldConfig | None = None):
        self.cfg = config or SyntheticWorldConfig()
        c = self.cfg
        if c.image_size % c.grid:
            raise ValueError(f"image_size ({c.image_size}) must be a multiple of grid ({c.grid})")
        if len(c.hcp_voxels) != len(HCP_AREAS) or len(c.god_voxels) != len(TASK_AREAS):
            raise ValueError(f"hcp_voxels needs {len(HCP_AREAS)} sizes and god_voxels {len(TASK_AREAS)}")
        rng = np.random.default_rng(c.seed)
        self.n_classes = c.n_train_classes + c.n_test_classes
        self.classes = class_attributes(self.n_classes, rng)
        self.embedding = category_embedding(self.classes, c.category_dim, c.seed)

    # -- images
    def render(self, class_ids, stream: int) -> np.ndarray:
        """Images of the given classes; ``stream`` selects an independent, reproducible instance stream."""
        rng = np.random.default_rng([self.cfg.seed, 1, stream])
        return np.stack([render_image(self.classes[int(c)], rng, self.cfg.image_size) for c in class_ids])

    def god_stimuli(self):
        """GOD-like stimuli: train images (n_train_classes x images_per_class) and one test image per
        test class; test classes are disjoint from train classes, as in GOD."""
        c = self.cfg
        train_cls = np.repeat(np.arange(c.n_train_classes), c.images_per_class)
        test_cls = c.n_train_classes + np.arange(c.n_test_classes)
        return self.render(train_cls, 0), train_cls, self.render(test_cls, 1), test_cls

    def wnid(self, class_id: int) -> str:
        return f"n{90000000 + int(class_id):08d}"

    def _feature_stats(self, feats: np.ndarray):
        return feats.mean(axis=(0, 1)), feats.std(axis=(0, 1)) + 1e-6

    def _stimulus_features(self, images, class_ids):
        return image_features(images, self.cfg.grid), self.embedding[np.asarray(class_ids)]

    # -- writers
    def write_hcp(self, root: str | os.PathLike) -> Path:
        """``root/<subject>/HCP_visual_voxel.npz`` with V1..V4 as (frames, voxels) float32."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, 2])
        ref_imgs, _, _, _ = self.god_stimuli()
        ref_cls = np.repeat(np.arange(c.n_train_classes), c.images_per_class)
        feats, cats = self._stimulus_features(ref_imgs, ref_cls)
        stats = self._feature_stats(feats)
        template = make_brain(HCP_AREAS, c.hcp_voxels, c.grid, c.category_dim, rng, cfg=c)

        def fill(tmp: Path):
            for s in range(c.hcp_subjects):
                srng = np.random.default_rng([c.seed, 3, s])
                brain = make_brain(HCP_AREAS, c.hcp_voxels, c.grid, c.category_dim, srng, template,
                                   c.subject_variability, cfg=c)
                brain.calibrate(feats, cats)
                ts = resting_state(brain, c.hcp_frames, c, srng, stats)
                sub = tmp / f"{100206 + s}"
                sub.mkdir()
                np.savez(sub / "HCP_visual_voxel.npz", **{a: ts[:, sl] for a, sl in brain.roi_slices().items()})
            _write_meta(tmp, "hcp", c)

        return atomic_dir(root, fill)

    def _task_brain(self, areas, sizes, stream: int, feats, cats) -> Brain:
        rng = np.random.default_rng([self.cfg.seed, 4, stream])
        brain = make_brain(areas, sizes, self.cfg.grid, self.cfg.category_dim, rng, cfg=self.cfg)
        brain.calibrate(feats, cats)
        return brain

    def _responses(self, brain: Brain, feats, cats, rng) -> np.ndarray:
        return brain.signal(feats, cats) + brain.noise(len(feats), self.cfg.snr, rng)

    def write_god(self, root: str | os.PathLike) -> Path:
        """The MinD-Vis GOD layout: ``sbj_N.npz``, ``images_256.npz``, class index and label csv files."""
        c = self.cfg
        train_imgs, train_cls, test_imgs, test_cls = self.god_stimuli()
        f_tr, e_tr = self._stimulus_features(train_imgs, train_cls)
        f_te, e_te = self._stimulus_features(test_imgs, test_cls)

        def fill(tmp: Path):
            np.savez(tmp / "images_256.npz", train_images=train_imgs, test_images=test_imgs)
            index = {str(k): [self.wnid(k), f"synthetic_{SHAPES[a['shape']]}_{k}"] for k, a in enumerate(self.classes)}
            (tmp / "imagenet_class_index.json").write_text(json.dumps(index, indent=1))
            for name, cls in (("imagenet_training_label.csv", train_cls), ("imagenet_testing_label.csv", test_cls)):
                with open(tmp / name, "w", newline="") as f:
                    w = csv.writer(f)
                    for i, k in enumerate(cls):
                        w.writerow([f"{90000000 + int(k)}.{i:06d}", f"{self.wnid(k)}_{i}.JPEG"])
            for s in range(c.god_subjects):
                brain = self._task_brain(TASK_AREAS, c.god_voxels, s, f_tr, e_tr)
                rng = np.random.default_rng([c.seed, 5, s])
                order = rng.permutation(len(train_imgs))  # presentation order of the training images
                train = self._responses(brain, f_tr[order], e_tr[order], rng)
                reps = np.concatenate([self._responses(brain, f_te, e_te, rng) for _ in range(c.test_repeats)])
                avg = reps.reshape(c.test_repeats, len(test_imgs), -1).mean(0)
                other = c.god_other_voxels  # non-visual voxels: noise only, outside every ROI
                pad = lambda a: np.concatenate([a, rng.normal(0, 1, (len(a), other)).astype(np.float32)], 1)
                masks = _roi_masks(brain, other)
                test_index = np.tile(np.arange(len(test_imgs)), c.test_repeats)  # arr_4: image of each arr_1 row
                np.savez(tmp / f"sbj_{s + 1}.npz", arr_0=pad(train), arr_1=pad(reps), arr_2=pad(avg),
                         arr_3=order, arr_4=test_index, **masks)
            _write_meta(tmp, "god", c)

        return atomic_dir(root, fill)

    def write_bold5000(self, root: str | os.PathLike) -> Path:
        """The BOLD5000 GLMsingle ROI-betas layout with stimulus lists and an image dictionary."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, 6])
        n_img = c.bold5000_train_images + c.bold5000_test_images
        cls = rng.integers(0, self.n_classes, n_img)
        imgs = self.render(cls, 2)
        names = [f"synthetic_{i:05d}.jpg" for i in range(n_img)]
        test_names = names[c.bold5000_train_images:]
        feats, cats = self._stimulus_features(imgs, cls)
        areas = [f"{h}{r}" for h in ("LH", "RH") for r in BOLD5000_ROIS]

        def fill(tmp: Path):
            stim = tmp / "BOLD5000_Stimuli" / "Scene_Stimuli"
            (stim / "Presented_Stimuli").mkdir(parents=True)
            np.save(stim / "Presented_Stimuli" / "img_dict.npy", dict(zip(names, imgs)), allow_pickle=True)
            (stim / "repeated_stimuli_113_list.txt").write_text("\n".join(test_names) + "\n")
            betas = tmp / "BOLD5000_GLMsingle_ROI_betas" / "py"
            betas.mkdir(parents=True)
            for s in range(c.bold5000_subjects):
                sub = f"CSI{s + 1}"
                srng = np.random.default_rng([c.seed, 7, s])
                brain = self._task_brain([a[2:] for a in areas], c.bold5000_voxels * 2, 100 + s, feats, cats)
                trials = list(range(c.bold5000_train_images)) + \
                    [i for i in range(c.bold5000_train_images, n_img) for _ in range(c.bold5000_test_repeats)]
                trials = list(srng.permutation(trials))
                resp = self._responses(brain, feats[trials], cats[trials], srng)
                bounds = np.cumsum([0] + brain.area_sizes)  # ROI names repeat across hemispheres
                for area, start, stop in zip(areas, bounds[:-1], bounds[1:]):
                    np.save(betas / f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{area}.npy", resp[:, start:stop])
                seen, lists = set(), tmp / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists" / sub
                per_run = 37
                for r, start in enumerate(range(0, len(trials), per_run)):
                    run_names = []
                    for i in trials[start:start + per_run]:
                        run_names.append(("rep_" if names[i] in seen else "") + names[i])
                        seen.add(names[i])
                    sess = lists / f"{sub}_sess{r // 10 + 1:02d}"
                    sess.mkdir(parents=True, exist_ok=True)
                    (sess / f"{sub}_sess{r // 10 + 1:02d}_run{r % 10 + 1:02d}.txt").write_text("\n".join(run_names) + "\n")
            _write_meta(tmp, "bold5000", c)

        return atomic_dir(root, fill)

    def nsd_design(self):
        """(masterordering, subjectim, sharedix, brick classes) of the NSD-like experiment, 1-based as the release."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, 8])
        n_trials = c.nsd_sessions * NSD_TRIALS_PER_SESSION
        if n_trials % 3:
            raise ValueError("nsd_sessions x 750 trials must be divisible by 3 (each image is shown three times)")
        per_subject = n_trials // 3
        if not 0 < c.nsd_shared < per_subject:
            raise ValueError(f"nsd_shared must be in (0, {per_subject}), got {c.nsd_shared}")
        own = per_subject - c.nsd_shared
        n_brick = c.nsd_shared + c.nsd_subjects * own
        subjectim = np.zeros((8, per_subject), np.int64)  # the release has 8 subjects; unused rows reuse images
        for s in range(8):
            pool = (np.arange(c.nsd_shared + s * own, c.nsd_shared + (s + 1) * own) if s < c.nsd_subjects
                    else rng.choice(np.arange(c.nsd_shared, n_brick), own))
            subjectim[s] = np.concatenate([np.arange(c.nsd_shared), pool]) + 1
        masterordering = rng.permutation(np.repeat(np.arange(1, per_subject + 1), 3))
        classes = rng.integers(0, self.n_classes, n_brick)
        return masterordering, subjectim, np.arange(1, c.nsd_shared + 1), classes

    def write_nsd(self, root: str | os.PathLike) -> Path:
        """The NSD release layout: per-session betas (NIfTI int16, percent signal change x 300), the nsdgeneral
        ROI, ``nsd_expdesign.mat`` and the stimulus brick ``nsd_stimuli.hdf5``."""
        import h5py
        import nibabel as nib
        from scipy.io import savemat

        c = self.cfg
        order, subjectim, sharedix, classes = self.nsd_design()
        brick = self.render(classes, 3)
        feats, cats = self._stimulus_features(brick, classes)
        shape = tuple(c.nsd_volume)
        n_roi = sum(c.nsd_voxels)
        if n_roi >= int(np.prod(shape)):
            raise ValueError(f"nsd_voxels ({n_roi}) must be fewer than the volume's {int(np.prod(shape))} voxels")
        affine = np.diag([1.8, 1.8, 1.8, 1.0])

        def fill(tmp: Path):
            design = tmp / "nsddata" / "experiments" / "nsd"
            design.mkdir(parents=True)
            savemat(design / "nsd_expdesign.mat", {"masterordering": order[None].astype(float),
                                                    "subjectim": subjectim.astype(float),
                                                    "sharedix": sharedix[None].astype(float)})
            stim = tmp / "nsddata_stimuli" / "stimuli" / "nsd"
            stim.mkdir(parents=True)
            with h5py.File(stim / "nsd_stimuli.hdf5", "w") as f:
                f.create_dataset("imgBrick", data=brick, chunks=(1, *brick.shape[1:]))
            for s in range(c.nsd_subjects):
                sub = f"subj{s + 1:02d}"
                rng = np.random.default_rng([c.seed, 9, s])
                brain = self._task_brain(TASK_AREAS, c.nsd_voxels, 200 + s, feats, cats)
                # nsdgeneral: a block at the back of the volume (C order of the betas' axes); -1 outside the brain
                roi = np.full(shape, -1, np.int16)
                flat = roi.reshape(-1)
                inside = np.arange(flat.size // 10, flat.size)
                flat[inside] = 0
                flat[np.sort(rng.choice(inside, n_roi, replace=False))] = 1
                roi_dir = tmp / "nsddata" / "ppdata" / sub / "func1pt8mm" / "roi"
                roi_dir.mkdir(parents=True)
                nib.save(nib.Nifti1Image(roi, affine), roi_dir / "nsdgeneral.nii.gz")
                betas_dir = tmp / "nsddata_betas" / "ppdata" / sub / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"
                betas_dir.mkdir(parents=True)
                images = subjectim[s, order - 1] - 1  # the brick index of every trial
                for sess in range(c.nsd_sessions):
                    t = images[sess * NSD_TRIALS_PER_SESSION:(sess + 1) * NSD_TRIALS_PER_SESSION]
                    vol = rng.normal(0, 1, (len(t), flat.size)).astype(np.float32)  # outside nsdgeneral: noise
                    vol[:, flat == 1] = self._responses(brain, feats[t], cats[t], rng)
                    offset = rng.normal(0, c.nsd_session_drift, flat.size)
                    gain = np.exp(rng.normal(0, c.nsd_session_drift / 2, flat.size))
                    pct = vol * gain + offset  # percent signal change
                    data = np.clip(np.round(pct * 300), -32768, 32767).astype(np.int16)
                    data = data.reshape(len(t), *shape).transpose(1, 2, 3, 0)  # (X, Y, Z, trials)
                    nib.save(nib.Nifti1Image(data, affine), betas_dir / f"betas_session{sess + 1:02d}.nii.gz")
            _write_meta(tmp, "nsd", c)

        return atomic_dir(root, fill)

    def _meeg_sources(self, s: int, sensors: np.ndarray, rng: np.random.Generator):
        """Subject ``s``'s dipoles for M/EEG (its visual cortex from its own stream) and their amplitudes for the
        GOD-like training then test images: (Sources, (images, S) amplitudes, number of training images)."""
        from . import synthetic_meeg as sm

        train_imgs, train_cls, test_imgs, test_cls = self.god_stimuli()
        f_tr, e_tr = self._stimulus_features(train_imgs, train_cls)
        f_te, e_te = self._stimulus_features(test_imgs, test_cls)
        brain = self._task_brain(TASK_AREAS, self.cfg.god_voxels, 300 + s, f_tr, e_tr)
        sources = sm.make_sources(list(brain.areas), self.cfg.meeg_sources_per_area, sensors, rng)
        signal = np.concatenate([brain.signal(f_tr, e_tr), brain.signal(f_te, e_te)])
        return sources, sm.source_amplitudes(signal, brain.area_sizes, self.cfg.meeg_sources_per_area), len(f_tr)

    def _concept(self, k: int) -> str:
        return f"synthetic_{SHAPES[self.classes[int(k)]['shape']]}_{int(k):03d}"

    def write_things_meg(self, root: str | os.PathLike) -> Path:
        """The THINGS-MEG BIDS layout (see :mod:`mindvis.data.synthetic_meeg`): continuous FIF runs with events."""
        import mne
        from PIL import Image

        from . import synthetic_meeg as sm

        c = self.cfg

        def fill(tmp: Path):
            sm.write_json(tmp / "dataset_description.json", {"Name": "synthetic THINGS-MEG", "BIDSVersion": "1.8.0"})
            (tmp / "participants.tsv").write_text("participant_id\n" + "".join(
                f"sub-BIGMEG{s + 1}\n" for s in range(c.meeg_subjects)))
            train_imgs, train_cls, test_imgs, test_cls = self.god_stimuli()
            paths = []
            for i, (img, k) in enumerate(zip(np.concatenate([train_imgs, test_imgs]), np.concatenate([train_cls, test_cls]))):
                rel = f"stimuli/{self._concept(k)}/{self._concept(k)}_{i:05d}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(tmp / rel)
                paths.append(rel)
            sensors = sm.helmet_positions(c.meg_sensors)
            names = [f"MEG{i + 1:03d}" for i in range(c.meg_sensors)]
            for s in range(c.meeg_subjects):
                rng = np.random.default_rng([c.seed, 10, s])
                sources, amps, n_train = self._meeg_sources(s, sensors, rng)
                trials = list(range(n_train)) + [i for i in range(n_train, len(amps)) for _ in range(c.meeg_test_repeats)]
                trials = rng.permutation(trials)
                times = np.arange(0, 1.0, 1 / c.meg_sfreq)
                early = times < 0.5
                ev_all = sm.evoked(amps, sources, times)  # (images, C, T)
                noise_sd = sm.scale_to_snr(float(ev_all[:, :, early].var()), c.meg_snr)
                for run, chunk in enumerate(np.array_split(trials, c.meg_runs)):
                    soa = sm.SOA_S + rng.uniform(-sm.SOA_JITTER_S, sm.SOA_JITTER_S, len(chunk))
                    onsets = 2.0 + np.concatenate([[0], np.cumsum(soa[:-1])])
                    n_samples = int((onsets[-1] + 3.0) * c.meg_sfreq)
                    data = noise_sd * sm.background(n_samples, c.meg_sfreq, sources.gain, rng)
                    stim = np.zeros((1, n_samples))
                    starts = np.round(onsets * c.meg_sfreq).astype(int)
                    for t, start in zip(chunk, starts):
                        data[:, start:start + len(times)] += ev_all[t]
                        stim[0, start] = 1 if t < n_train else 2
                    info = mne.create_info(names + [sm.MEG_TRIGGER], c.meg_sfreq, ["mag"] * len(names) + ["stim"])
                    for ch, p in zip(info["chs"], sensors):
                        ch["loc"][:3] = p
                    raw = mne.io.RawArray(np.concatenate([data * 1e-13, stim]), info, verbose="error")
                    meg = tmp / f"sub-BIGMEG{s + 1}" / "ses-01" / "meg"
                    meg.mkdir(parents=True, exist_ok=True)
                    stem = f"sub-BIGMEG{s + 1}_ses-01_task-main_run-{run + 1:02d}"
                    raw.save(meg / f"{stem}_meg.fif", fmt="single", verbose="error")
                    rows = ["onset\tduration\ttrial_type\tvalue\tsample\timage_nr\tcategory_nr\timage_path"]
                    for t, start in zip(chunk, starts):
                        kind = "exp" if t < n_train else "test"
                        k = int(train_cls[t] if t < n_train else test_cls[t - n_train])
                        rows.append(f"{start / c.meg_sfreq:.6f}\t0.5\t{kind}\t{1 if kind == 'exp' else 2}\t{start}\t"
                                    f"{t + 1}\t{k + 1}\t{paths[t]}")
                    (meg / f"{stem}_events.tsv").write_text("\n".join(rows) + "\n")
                    (meg / f"{stem}_channels.tsv").write_text("name\ttype\tunits\n" + "".join(
                        f"{n}\tMEGMAG\tT\n" for n in names) + f"{sm.MEG_TRIGGER}\tTRIG\tn/a\n")
            _write_meta(tmp, "things-meg", c)

        return atomic_dir(root, fill)

    def write_things_eeg2(self, root: str | os.PathLike) -> Path:
        """The THINGS-EEG2 layout (see :mod:`mindvis.data.synthetic_meeg`): preprocessed .npy dicts and image folders."""
        from PIL import Image

        from . import synthetic_meeg as sm

        c = self.cfg
        times = np.round(np.arange(-0.2, 0.8 - 1e-9, 0.01), 2)  # 100 samples at 100 Hz, as the release

        def fill(tmp: Path):
            train_imgs, train_cls, test_imgs, test_cls = self.god_stimuli()
            for split, imgs, cls in (("training", train_imgs, train_cls), ("test", test_imgs, test_cls)):
                order = np.argsort(cls, kind="stable")  # the release orders images by concept folder
                for i in order:
                    k = int(cls[i])
                    folder = tmp / "image_set" / f"{split}_images" / f"{sorted(set(cls.tolist())).index(k) + 1:05d}_{self._concept(k)}"
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(imgs[i]).save(folder / f"{self._concept(k)}_{i:05d}.png")
            sensors = sm.eeg2_positions()
            for s in range(c.meeg_subjects):
                rng = np.random.default_rng([c.seed, 11, s])
                sources, amps, n_train = self._meeg_sources(s, sensors, rng)
                ev = sm.evoked(amps, sources, times)  # (images, 17, 100)
                noise_sd = sm.scale_to_snr(float(ev[:, :, (times >= 0) & (times < 0.5)].var()), c.eeg_snr)
                folder = tmp / "preprocessed_data" / f"sub-{s + 1:02d}"
                folder.mkdir(parents=True)
                for split, idx, reps in (("training", np.argsort(train_cls, kind="stable"), c.eeg_train_repeats),
                                         ("test", n_train + np.argsort(test_cls, kind="stable"), c.meeg_test_repeats)):
                    data = np.stack([[ev[i] + noise_sd * sm.background(len(times), 100.0, sources.gain, rng)
                                      for _ in range(reps)] for i in idx]).astype(np.float32)
                    np.save(folder / f"preprocessed_eeg_{split}.npy",
                            {"preprocessed_eeg_data": data, "ch_names": list(sm.EEG2_CHANNELS), "times": times},
                            allow_pickle=True)
            _write_meta(tmp, "things-eeg2", c)

        return atomic_dir(root, fill)

    def write(self, root: str | os.PathLike, parts=("hcp", "god", "bold5000")) -> Path:
        """Write the chosen parts under ``root`` as ``HCP/``, ``GOD/``, ``BOLD5000/``, ``NSD/``, ``THINGS-MEG/`` and
        ``THINGS-EEG2/``."""
        root = Path(root)
        writers = {"hcp": (self.write_hcp, "HCP"), "god": (self.write_god, "GOD"),
                   "bold5000": (self.write_bold5000, "BOLD5000"), "nsd": (self.write_nsd, "NSD"),
                   "things-meg": (self.write_things_meg, "THINGS-MEG"),
                   "things-eeg2": (self.write_things_eeg2, "THINGS-EEG2")}
        for p in parts:
            if p not in writers:
                raise ValueError(f"unknown part {p!r}; choose from {sorted(writers)}")
            fn, sub = writers[p]
            if not (root / sub / "meta.json").exists():
                fn(root / sub)
        return root


def _roi_masks(brain: Brain, other: int) -> dict[str, np.ndarray]:
    n = brain.n_voxels + other
    masks = {}
    for area, sl in brain.roi_slices().items():
        m = np.zeros(n, bool)
        m[sl] = True
        masks[area] = m
    masks["LVC"] = masks["V1"] | masks["V2"] | masks["V3"]
    masks["HVC"] = masks["LOC"] | masks["FFA"] | masks["PPA"]
    masks["VC"] = masks["LVC"] | masks["V4"] | masks["HVC"]
    return masks


def _write_meta(folder: Path, part: str, cfg: SyntheticWorldConfig) -> None:
    meta = {"generator": "mindvis.data.synthetic", "part": part, "config": asdict(cfg),
            "fingerprint": cfg.fingerprint()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


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


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINDVIS_CACHE", Path.home() / ".cache" / "mindvis"))


def ensure_world(cfg: SyntheticWorldConfig | None = None, parts=("hcp", "god", "bold5000"),
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached world for ``cfg`` (generated on first use); returns its root folder."""
    cfg = cfg or SyntheticWorldConfig()
    root = Path(cache_dir or default_cache_dir()) / "synthetic" / cfg.fingerprint()
    return SyntheticWorld(cfg).write(root, parts)
