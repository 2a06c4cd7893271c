"""Ridge regression from voxels to an embedding, its penalty chosen by k-fold cross-validation.

The baseline of the decoding literature (Banville, Benchetrit et al. 2025 compare every deep decoder with it).
Every candidate penalty of a fold is scored from **one** eigendecomposition of that fold's Gram matrix (of
the smaller side: X^T X when voxels <= trials, X X^T otherwise), so a grid of penalties costs one
decomposition per fold plus one for the final fit, never a refit per penalty:

    X_c = centred voxels, G = X_c^T X_c = V diag(s) V^T
    W(alpha) = V diag(1 / (s + alpha)) V^T X_c^T Y_c          (primal)
    W(alpha) = X_c^T U diag(1 / (s + alpha)) U^T Y_c           (dual, X_c X_c^T = U diag(s) U^T)

The voxels are contracted once: in the dual form the whole training set's Gram matrix x x^T is computed once and
every fold's (centred) kernels are read from it.

Selection follows scikit-learn's ``RidgeCV(alphas, cv=KFold(k))``: the mean over folds of the held-out R^2
(uniform over targets for a shared penalty, per target with ``per_target``), the first best in grid order; the
final model is refitted on all training rows. Folds are contiguous (``KFold`` without shuffling) unless
``shuffle_seed`` is given.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .persistence import PretrainedMixin

log = logging.getLogger("mindvis.ridge")

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))


@dataclass
class RidgeConfig:
    num_voxels: int
    dim: int
    alphas: list = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    folds: int = 5
    per_target: bool = False  # one penalty per target dimension instead of one for all


def kfold_indices(n: int, k: int, shuffle_seed: int | None = None) -> list[np.ndarray]:
    """Held-out index sets of ``k`` folds, sized as scikit-learn's KFold (the first n % k folds one larger)."""
    if not 2 <= k <= n:
        raise ValueError(f"cross-validation needs 2 <= folds <= samples, got {k} folds for {n} samples")
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    return np.split(order, np.cumsum(sizes)[:-1])


class _Spectral:
    """One decomposition of centred training data; solutions for any penalty from it.

    Dual form (more voxels than rows): from the rows' uncentred Gram matrix ``gram`` = x x^T (shared by every
    fold, so the voxel dimension is contracted once for the whole cross-validation), centred in place of x.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, gram: np.ndarray | None = None):
        self.x, self.x_mean, self.y_mean = x, x.mean(0), y.mean(0)
        self.dual = x.shape[1] > x.shape[0]
        yc = y - self.y_mean
        if self.dual:
            g = x @ x.T if gram is None else gram
            self.row_dot_mean = g.mean(1)  # x_i . mean
            self.mean_sq = self.row_dot_mean.mean()  # mean . mean
            kc = g - self.row_dot_mean[:, None] - self.row_dot_mean[None, :] + self.mean_sq
            self.s, self.vecs = np.linalg.eigh(kc)
            self.q = self.vecs.T @ yc  # (n, T)
        else:
            xc = x - self.x_mean
            self.s, self.vecs = np.linalg.eigh(xc.T @ xc)
            self.q = self.vecs.T @ (xc.T @ yc)  # (V, T)
        self.s = np.clip(self.s, 0, None)

    def projector(self, x_new: np.ndarray, cross: np.ndarray | None = None) -> np.ndarray:
        """P with predictions(alpha) = P @ (q / (s + alpha)) + y_mean; ``cross`` = x_new x^T if known (dual)."""
        if not self.dual:
            return (x_new - self.x_mean) @ self.vecs
        c = x_new @ self.x.T if cross is None else cross
        kc = c - c.mean(1)[:, None] - self.row_dot_mean[None, :] + self.mean_sq  # centred cross-kernel
        return kc @ self.vecs

    def coef(self, alpha: np.ndarray) -> np.ndarray:
        """(V, T) weights for a penalty per target (``alpha`` of shape (T,))."""
        scaled = self.q / (self.s[:, None] + alpha[None, :])
        if not self.dual:
            return self.vecs @ scaled
        a = self.vecs @ scaled  # dual coefficients (n, T); W = (x - mean)^T a
        return self.x.T @ a - self.x_mean[:, None] * a.sum(0)[None, :]


def _r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-target R^2 as scikit-learn's r2_score (a constant target scores 1 if predicted exactly, else 0)."""
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    out = np.ones(y.shape[1])
    ok = ss_tot > 0
    out[ok] = 1 - ss_res[ok] / ss_tot[ok]
    out[~ok & (ss_res > 0)] = 0.0
    return out


def folds_are_dual(n: int, v: int, folds: int) -> bool:
    """Whether a fold's training rows (the smallest: n minus the largest held-out fold) are fewer than the voxels."""
    return v > n - -(-n // folds)


def cross_validate(x: np.ndarray, y: np.ndarray, alphas, folds: int = 5, shuffle_seed: int | None = None,
                   gram: np.ndarray | None = None) -> np.ndarray:
    """Mean held-out R^2 per (alpha, target): (len(alphas), T). ``gram``: x x^T, if already computed."""
    alphas = np.asarray(alphas, dtype=np.float64)
    scores = np.zeros((len(alphas), y.shape[1]))
    held_out = kfold_indices(len(x), folds, shuffle_seed)
    if gram is None and folds_are_dual(len(x), x.shape[1], folds):
        gram = x @ x.T
    for k, test in enumerate(tqdm(held_out, desc="ridge cross-validation", leave=False, disable=len(x) < 2000)):
        train = np.setdiff1d(np.arange(len(x)), test)
        sub = (lambda rows: gram[np.ix_(rows, train)]) if gram is not None else (lambda rows: None)
        sp = _Spectral(x[train], y[train], sub(train))
        proj = sp.projector(x[test], sub(test))
        for a, alpha in enumerate(alphas):
            pred = proj @ (sp.q / (sp.s + alpha)[:, None]) + sp.y_mean
            scores[a] += _r2(y[test], pred)
        log.debug("ridge: fold %d/%d done", k + 1, folds)
    return scores / folds


class RidgeDecoder(PretrainedMixin, nn.Module):
    """Linear voxels -> embedding; ``forward`` gives the same embedding for retrieval and regression."""

    def __init__(self, config: RidgeConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.zeros(config.dim, config.num_voxels), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(config.dim), requires_grad=False)
        self.register_buffer("alpha", torch.zeros(config.dim, dtype=torch.float64))

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "RidgeDecoder":
        return cls(RidgeConfig(**config))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, config: RidgeConfig | None = None, shuffle_seed: int | None = None,
            dtype=np.float64) -> "RidgeDecoder":
        """Choose the penalty by cross-validation on (x, y), then refit on all rows."""
        x, y = np.asarray(x, dtype=dtype), np.asarray(y, dtype=dtype)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"ridge needs x (N, V) and y (N, D) with the same N, got {x.shape} and {y.shape}")
        for name, a in (("voxels", x), ("targets", y)):
            if not np.isfinite(a).all():
                raise ValueError(f"ridge: the {name} hold NaN/Inf")
        config = config or RidgeConfig(num_voxels=x.shape[1], dim=y.shape[1])
        alphas = np.asarray(config.alphas, dtype=np.float64)
        if (alphas <= 0).any():
            raise ValueError(f"ridge penalties must be positive, got {config.alphas}")
        gram = x @ x.T if folds_are_dual(len(x), x.shape[1], config.folds) else None  # contract voxels once
        scores = cross_validate(x, y, alphas, config.folds, shuffle_seed, gram)
        if config.per_target:
            best = alphas[scores.argmax(0)]
        else:
            best = np.full(y.shape[1], alphas[scores.mean(1).argmax()])
        sp = _Spectral(x, y, gram)
        w = sp.coef(best)  # (V, T)
        intercept = sp.y_mean - sp.x_mean @ w
        model = cls(config)
        model.weight.data = torch.from_numpy(np.ascontiguousarray(w.T)).float()
        model.bias.data = torch.from_numpy(intercept).float()
        model.alpha = torch.from_numpy(best)
        model.coef_, model.intercept_, model.cv_scores_ = w.T, intercept, scores  # float64
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, V) or (N, 1, V) -> (N, D)."""
        if x.ndim == 3:
            x = x[:, 0]
        return x @ self.weight.T + self.bias
