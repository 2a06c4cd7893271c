"""The synthetic brain of one subject: voxels on a cortical sheet per visual area, their receptive fields, tunings
and category loadings, the response nonlinearity and the measurement noise (see :mod:`mindvis.world`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import RESPONSES, SyntheticWorldConfig
from .stimuli import N_FEATURES

HCP_AREAS = ("V1", "V2", "V3", "V4")
TASK_AREAS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA")

# receptive-field size (fraction of the image width) and category weight per area
_RF_SIZE = {"V1": 0.04, "V2": 0.07, "V3": 0.10, "V4": 0.15, "LOC": 0.25, "FFA": 0.3, "PPA": 0.35,
            "EarlyVis": 0.06, "OPA": 0.25, "RSC": 0.35}
# compressive exponent per area: Kay et al. 2013 found it below 1 in every area and smaller (more compressive) in
# anterior areas; these values follow that ordering, they are not the paper's fits
_CSS_EXPONENT = {"V1": 0.5, "V2": 0.4, "V3": 0.35, "V4": 0.3, "LOC": 0.25, "FFA": 0.2, "PPA": 0.2,
                 "EarlyVis": 0.45, "OPA": 0.25, "RSC": 0.2}
_CATEGORY_WEIGHT = {"V1": 0.0, "V2": 0.1, "V3": 0.25, "V4": 0.45, "LOC": 0.65, "FFA": 0.75, "PPA": 0.75,
                    "EarlyVis": 0.05, "OPA": 0.6, "RSC": 0.7}


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
