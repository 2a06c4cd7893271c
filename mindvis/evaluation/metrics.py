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


def pairwise_ssim(rec: torch.Tensor, gt: torch.Tensor, win: int = 7, chunk: int = 64) -> torch.Tensor:
    """(N, N) SSIM as scikit-image's default ``structural_similarity`` (7 x 7 uniform window, sample
    covariance, K1 0.01, K2 0.03, data range 1, averaged over channels and valid windows).

    Local means and variances are computed once per image; only the cross term is per pair, with
    box filtering (``avg_pool2d``), which keeps 50 x 50 pairs at 256 px interactive on a CPU.
    """
    win = min(win, rec.shape[-1], rec.shape[-2])
    win -= 1 - win % 2  # odd
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    norm = win * win / (win * win - 1)

    def box(x):  # separable 7 x 7 mean over valid windows
        return F.avg_pool2d(F.avg_pool2d(x, (win, 1), stride=1), (1, win), stride=1)

    mu_r, mu_g = box(rec), box(gt)
    var_r, var_g = norm * (box(rec * rec) - mu_r ** 2), norm * (box(gt * gt) - mu_g ** 2)
    den_g, vden_g = mu_g ** 2 + c1, var_g + c2  # per ground truth, reused for every reconstruction
    out = torch.empty(len(rec), len(gt))
    for i in range(len(rec)):
        mr, vr = mu_r[i:i + 1], var_r[i:i + 1]
        for j in range(0, len(gt), chunk):
            mg = mu_g[j:j + chunk]
            cov = box(rec[i:i + 1] * gt[j:j + chunk]).sub_(mr * mg).mul_(2 * norm).add_(c2)
            num = cov.mul_(mr * mg * 2 + c1)
            den = (den_g[j:j + chunk] + mr ** 2).mul_(vden_g[j:j + chunk] + vr)
            out[i, j:j + chunk] = num.div_(den).mean(dim=(1, 2, 3))
    return out


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
