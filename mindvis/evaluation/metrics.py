"""The paper's metrics, vectorised: n-way top-k semantic classification and pair-wise identification.

Identification: a reconstruction of image i scores the fraction of other ground-truth images j whose
similarity to it is worse than that of its own ground truth (1.0 = perfect, 0.5 = chance). Similarity
matrices are computed once for all pairs as tensor operations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def n_way_top_k(probs: torch.Tensor, true_class: torch.Tensor, n_way: int = 50, top_k: int = 1, trials: int = 50,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample n-way top-k accuracy, averaged over ``trials`` random draws of the n-1 distractor classes.

    probs (M, C): classifier probabilities of the generated images; true_class (M,): the class the
    classifier gives the ground-truth image. Returns (M,) accuracies in [0, 1].
    """
    m, c = probs.shape
    if n_way > c:
        raise ValueError(f"n_way={n_way} is larger than the number of classes ({c})")
    if not 1 <= top_k <= n_way:
        raise ValueError(f"top_k must be in [1, n_way], got {top_k}")
    # distractors: n-1 distinct classes other than the true one, per sample and trial
    noise = torch.rand(m, trials, c, generator=generator)
    noise[torch.arange(m), :, true_class] = 2.0  # never pick the true class
    distractors = noise.argsort(-1)[..., : n_way - 1]  # (M, T, n-1)
    p_true = probs[torch.arange(m), true_class][:, None]  # (M, 1)
    p_dis = torch.gather(probs[:, None, :].expand(-1, trials, -1), 2, distractors)  # (M, T, n-1)
    rank = (p_dis > p_true[..., None]).sum(-1)  # distractors ranked above the true class
    return (rank < top_k).float().mean(1)


def identification(similarity: torch.Tensor, higher_is_better: bool = True) -> torch.Tensor:
    """(N,) pair-wise identification from an (N, N) matrix: row i = reconstruction i, column j = ground truth j."""
    s = similarity if higher_is_better else -similarity
    own = s.diagonal()[:, None]
    n = s.shape[0]
    if n < 2:
        raise ValueError("identification needs at least two images")
    better = (own > s).float()
    better.fill_diagonal_(0)
    return better.sum(1) / (n - 1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def pairwise_mse(rec: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(N, N) mean squared error between every reconstruction and every ground truth."""
    r, g = _flat(rec), _flat(gt)
    d = (r * r).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * r @ g.T
    return (d / r.shape[1]).clamp_min(0).float()


def pairwise_pcc(rec: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(N, N) Pearson correlation of pixels."""
    r, g = _flat(rec), _flat(gt)
    r = F.normalize(r - r.mean(1, keepdim=True), dim=1)
    g = F.normalize(g - g.mean(1, keepdim=True), dim=1)
    return (r @ g.T).float()


SSIM_K1, SSIM_K2 = 0.01, 0.03
COMPILE_MIN_ELEMENTS = 2 ** 26  # pairs x pixels above which compiling the SSIM kernel pays for itself
SSIM_BLOCK_ELEMENTS = 2 ** 21  # ground-truth pixels per kernel call: its intermediate stays in cache


def _window_mean(x: torch.Tensor, win: int, fused: bool = False) -> torch.Tensor:
    """Mean over every valid win x win window of the last two axes. ``fused``: written as shifted slices, which
    a compiler fuses with the product before it and the arithmetic after it (no full-size temporaries);
    otherwise separable average pooling, the faster form in eager mode."""
    if not fused:
        shape = x.shape
        x = x.reshape(-1, *shape[-3:])
        y = F.avg_pool2d(F.avg_pool2d(x, (win, 1), stride=1), (1, win), stride=1)
        return y.reshape(*shape[:-2], *y.shape[-2:])
    h, w = x.shape[-2] - win + 1, x.shape[-1] - win + 1
    v = sum(x[..., k:k + h, :] for k in range(win))
    return sum(v[..., k:k + w] for k in range(win)) / (win * win)


def _ssim_rows(r: torch.Tensor, mu_r: torch.Tensor, var_r: torch.Tensor, g: torch.Tensor, mu_g: torch.Tensor,
               var_g: torch.Tensor, win: int, fused: bool) -> torch.Tensor:
    """(a, N) mean SSIM of reconstructions r (a, C, H, W) against every ground truth g (N, C, H, W), given each
    image's local means and (sample) variances (.., C, H-win+1, W-win+1)."""
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    norm = win * win / (win * win - 1)  # sample covariance, as scikit-image's default
    cross = _window_mean(r[:, None] * g[None], win, fused)  # (a, N, C, h, w)
    mm = mu_r[:, None] * mu_g[None]
    num = cross.sub_(mm).mul_(2 * norm).add_(c2).mul_(mm.mul_(2).add_(c1))  # in place: fewer eager temporaries
    den = (mu_r[:, None] ** 2 + mu_g[None] ** 2 + c1).mul_(var_r[:, None] + var_g[None] + c2)
    return num.div_(den).mean(dim=(2, 3, 4))


_compiled_ssim_rows = None


def _ssim_kernel(work: int, compile: bool | None):
    """The row kernel, compiled (torch.compile: one fused loop) for large inputs; eager when compiling is
    off, not worth it, or unavailable (the first failure is reported once and eager is used from then on)."""
    global _compiled_ssim_rows
    if compile is False or (compile is None and work < COMPILE_MIN_ELEMENTS) or _compiled_ssim_rows is False:
        return _ssim_rows
    if _compiled_ssim_rows is None:
        _compiled_ssim_rows = torch.compile(_ssim_rows, dynamic=False)
    return _compiled_ssim_rows


def pairwise_ssim(rec: torch.Tensor, gt: torch.Tensor, win: int = 7, compile: bool | None = None) -> torch.Tensor:
    """(N, M) SSIM as scikit-image's default ``structural_similarity`` (7 x 7 uniform window, sample
    covariance, K1 0.01, K2 0.03, data range 1, averaged over channels and valid windows).

    Local means and variances are computed once per image; only the cross term is per pair, for one
    reconstruction against a block of ground truths whose intermediate fits in cache. For large inputs
    that kernel is compiled into fused loops (``compile=None``: when it pays; True/False force it), which
    makes 50 x 5 samples against 50 images at 256 px about 5-10x faster on a CPU (bench/bench_ssim.py).
    """
    global _compiled_ssim_rows
    win = min(win, rec.shape[-1], rec.shape[-2])
    win -= 1 - win % 2  # odd
    norm = win * win / (win * win - 1)

    def local_stats(x):
        mu = _window_mean(x, win)
        return mu, norm * (_window_mean(x * x, win) - mu ** 2)

    m = len(gt)
    block = max(1, min(m, SSIM_BLOCK_ELEMENTS // gt[0].numel()))
    pad = -m % block  # equal blocks: one compiled shape
    gt_padded = torch.cat([gt, gt[:1].expand(pad, *gt.shape[1:])]) if pad else gt
    (mu_r, var_r), (mu_g, var_g) = local_stats(rec), local_stats(gt_padded)
    kernel = _ssim_kernel(len(rec) * m * rec[0].numel(), compile)
    out = torch.empty(len(rec), m + pad, dtype=rec.dtype, device=rec.device)
    for i in range(len(rec)):
        for j in range(0, m + pad, block):
            args = (rec[i:i + 1], mu_r[i:i + 1], var_r[i:i + 1], gt_padded[j:j + block], mu_g[j:j + block],
                    var_g[j:j + block], win)
            try:
                out[i, j:j + block] = kernel(*args, kernel is not _ssim_rows)[0]
            except Exception as e:  # a missing C++ compiler or an unsupported backend: fall back, once
                if kernel is _ssim_rows:
                    raise
                import warnings

                warnings.warn(f"compiled SSIM unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "using the eager kernel", RuntimeWarning)
                _compiled_ssim_rows, kernel = False, _ssim_rows
                out[i, j:j + block] = kernel(*args, False)[0]
    return out[:, :m].float()


def pairwise_feature_distance(f_rec: list[torch.Tensor], f_gt: list[torch.Tensor],
                              weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(N, N) LPIPS-style distance from per-layer features (N, C, H, W): channel-normalised, optionally
    channel-weighted squared differences, averaged over space and summed over layers."""
    total = 0
    for k, (a, b) in enumerate(zip(f_rec, f_gt)):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        if weights is not None:
            wk = weights[k].view(1, -1, 1, 1).sqrt()
            a, b = a * wk, b * wk
        hw = a.shape[2] * a.shape[3]
        a, b = a.flatten(1).double(), b.flatten(1).double()
        total = total + ((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T) / hw
    return torch.as_tensor(total).float()


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (FID on Inception features).

    tr(sqrt(S1 S2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    sqrt(S1) S2 sqrt(S1).
    """
    a, b = feat_a.double(), feat_b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    e, v = torch.linalg.eigh(s1)
    sqrt_s1 = (v * e.clamp_min(0).sqrt()) @ v.T
    tr_covmean = torch.linalg.eigvalsh(sqrt_s1 @ s2 @ sqrt_s1).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_covmean)
