"""The NSD reconstruction metric suite, defined as MindEye's and MindEye2's published evaluations compute it.

Images in [0, 1], (N, 3, H, W); ground truths and reconstructions are first resized to 256 x 256, then per metric.
Every resize is torchvision's tensor ``Resize``, bilinear **without antialiasing**: the published tables were
computed with torchvision 0.15 / 0.16, whose tensor resize did not antialias (``antialias=True`` is available and
reported as not comparable to the published rows). Tested against MindEye's own metric code
(tests/test_nsd_suite_reference.py, tools/reference_fixtures/nsd_metrics.py).

* **PixCorr**: resize to 425, Pearson r between the flattened RGB pixels of each reconstruction and its ground
  truth; mean over images.
* **SSIM**: resize to 425, grayscale (scikit-image ``rgb2gray`` weights), SSIM with Gaussian weights (sigma 1.5,
  truncated at 3.5 sigma), population covariance, data range 1, averaged over the positions where the 11 x 11 window
  fits (scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)``); mean over images.
* **AlexNet(2) / AlexNet(5)** (``features.4`` / ``features.11``, 256 px), **Inception** (v3, ``avgpool``, 342 px) and
  **CLIP** (ViT-L/14 image embedding, 224 px, CLIP's normalisation): two-way identification from the correlation of
  flattened features: a reconstruction scores the fraction of the other ground truths that correlate with it less
  than its own ground truth does (chance 0.5).
* **EffNet-B** (B1 with torchvision's ``DEFAULT`` = ``IMAGENET1K_V2`` weights, ``avgpool``, 255 px) and **SwAV**
  (ResNet-50, ``avgpool``, 224 px): mean correlation distance (1 - r) between each reconstruction's features and its
  ground truth's (lower is better).
* **Retrieval** (decoded and target embeddings): MindEye2's 30 draws of 300 test items (numpy's legacy
  ``RandomState(42)``), cosine similarity, top-1, computed in the directions the published code computes them and
  labelled as the papers label them (:func:`mindvis.evaluation.retrieval.published_retrieval`).
* MindEye2's evaluation of "enhanced" reconstructions scores each blended 0.75 with 0.25 of its blurry
  reconstruction (both at 256 px): ``blurry=``.

With K samples per image every metric is computed per sample index and reported as the mean (and spread) over the
K values; with one sample it is exactly the published number. Networks come from local weights (torch's cache or
given files; CLIP from a local folder or a cached hub id): a metric whose network is not available is skipped with
the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .classifiers import IMAGENET_MEAN, IMAGENET_STD
from .metrics import SSIM_K1, SSIM_K2

NSD_METRICS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")
IDENTIFICATION = ("alexnet2", "alexnet5", "inception", "clip")
DISTANCE = ("effnet", "swav")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
GRAY = (0.2125, 0.7154, 0.0721)  # scikit-image rgb2gray
#: (input size, normalisation) of each network metric, as the published evaluations feed them
INPUTS = {"alexnet2": (256, IMAGENET_MEAN, IMAGENET_STD), "alexnet5": (256, IMAGENET_MEAN, IMAGENET_STD),
          "inception": (342, IMAGENET_MEAN, IMAGENET_STD), "clip": (224, CLIP_MEAN, CLIP_STD),
          "effnet": (255, IMAGENET_MEAN, IMAGENET_STD), "swav": (224, IMAGENET_MEAN, IMAGENET_STD)}
#: MindEye2's Table 1 columns, in order: (metric, header, higher is better)
TABLE = [("pixcorr", "PixCorr", True), ("ssim", "SSIM", True), ("alexnet2", "Alex(2)", True),
         ("alexnet5", "Alex(5)", True), ("inception", "Incep", True), ("clip", "CLIP", True),
         ("effnet", "Eff", False), ("swav", "SwAV", False)]


CHUNK = 50  # images per step of the pixel metrics and resizes: memory stays bounded at NSD size


#: the resizes of the published evaluations: torchvision 0.15 / 0.16 tensor ``Resize``, which did not antialias
PUBLISHED_ANTIALIAS = False


def resize(images: torch.Tensor, size: int, antialias: bool = PUBLISHED_ANTIALIAS) -> torch.Tensor:
    """torchvision ``Resize`` to size x size: bilinear, not antialiased as published (in chunks of images)."""
    from torchvision.transforms.functional import InterpolationMode
    from torchvision.transforms.functional import resize as tv_resize

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.cat([tv_resize(images[i:i + CHUNK].float(), [size, size], InterpolationMode.BILINEAR,
                                antialias=antialias) for i in range(0, len(images), CHUNK)])


def _pairwise_chunks(fn, rec: torch.Tensor, gt: torch.Tensor, **kwargs) -> torch.Tensor:
    """(N,) ``fn`` of each (reconstruction, ground truth) pair, evaluated CHUNK pairs at a time."""
    return torch.cat([fn(rec[i:i + CHUNK], gt[i:i + CHUNK], **kwargs) for i in range(0, len(rec), CHUNK)])


def pixcorr(rec: torch.Tensor, gt: torch.Tensor, antialias: bool = PUBLISHED_ANTIALIAS) -> torch.Tensor:
    """(N,) Pearson r of each pair's flattened RGB pixels at 425 px."""
    r, g = resize(rec, 425, antialias).flatten(1).double(), resize(gt, 425, antialias).flatten(1).double()
    r, g = r - r.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
    return (r * g).sum(1) / (r.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-12)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_gaussian(rec: torch.Tensor, gt: torch.Tensor, sigma: float = 1.5,
                  antialias: bool = PUBLISHED_ANTIALIAS) -> torch.Tensor:
    """(N,) SSIM of each pair as the NSD suite: 425 px, grayscale, Gaussian window, population covariance.

    scikit-image filters with reflection at the borders and then crops (win - 1) / 2 pixels, which is exactly the
    width of the truncated Gaussian: so the mean runs over the valid positions of an unpadded filter."""
    gray = torch.tensor(GRAY).view(1, 3, 1, 1)
    # grayscale, then resize: both are linear, so this equals resizing RGB first, at a third of the cost
    x = resize((rec.float() * gray).sum(1, keepdim=True), 425, antialias).double()
    y = resize((gt.float() * gray).sum(1, keepdim=True), 425, antialias).double()
    w = _gaussian_window(sigma)
    k = len(w)

    def blur(z):
        return F.conv2d(F.conv2d(z, w.view(1, 1, k, 1)), w.view(1, 1, 1, k))

    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def feature_correlations(f_rec: torch.Tensor, f_gt: torch.Tensor) -> torch.Tensor:
    """(N, N) r[i, j]: Pearson correlation of reconstruction i's flattened features with ground truth j's."""
    a, b = f_rec.flatten(1).double(), f_gt.flatten(1).double()
    a = F.normalize(a - a.mean(1, keepdim=True), dim=1)
    b = F.normalize(b - b.mean(1, keepdim=True), dim=1)
    return a @ b.T


def two_way_identification(f_rec: torch.Tensor, f_gt: torch.Tensor) -> torch.Tensor:
    """(N,) float64, per reconstruction: the fraction of other ground truths less correlated with it than its own
    ground truth is (strictly less: ties count against, as the published ``r < congruents``)."""
    r = feature_correlations(f_rec, f_gt)
    n = len(r)
    if n < 2:
        raise ValueError("identification needs at least two images")
    return (r < r.diagonal()[:, None]).sum(1).double() / (n - 1)


def correlation_distance(f_rec: torch.Tensor, f_gt: torch.Tensor) -> torch.Tensor:
    """(N,) 1 - Pearson r between each reconstruction's features and its own ground truth's (scipy's correlation)."""
    return 1 - feature_correlations(f_rec, f_gt).diagonal()


@dataclass
class FeatureNet:
    """A network metric's feature extractor: images prepared at ``size`` with ``mean``/``std`` -> (N, ...) features."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    size: int
    mean: tuple
    std: tuple

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 32,
                 antialias: bool = PUBLISHED_ANTIALIAS) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        out = [self.forward((resize(images[i:i + batch_size], self.size, antialias) - mean) / std).flatten(1).float()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out)


def torchvision_features(name: str, net: torch.nn.Module) -> FeatureNet:
    """``name`` in INPUTS (not clip): the published node of a torchvision network (eval mode)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    node = {"alexnet2": "features.4", "alexnet5": "features.11"}.get(name, "avgpool")
    extractor = create_feature_extractor(net.eval(), return_nodes=[node]).eval()
    return FeatureNet(lambda x: extractor(x)[node], *INPUTS[name])


def clip_features(model) -> FeatureNet:
    """A transformers ``CLIPVisionModelWithProjection``: the projected image embedding."""
    model = model.eval()
    return FeatureNet(lambda x: model(pixel_values=x).image_embeds, *INPUTS["clip"])


def load_networks(weights: dict[str, str] | None = None, clip: str = "openai/clip-vit-large-patch14",
                  metrics=NSD_METRICS) -> tuple[dict[str, FeatureNet], dict[str, str]]:
    """The suite's networks from local weights: ``weights`` maps alexnet / inception / effnet / swav to a state-dict
    file (safetensors or a torch file of tensors); otherwise torchvision's weights from torch's cache. CLIP: a local
    folder or a hub id already in the cache. Returns (networks, {metric: reason it is skipped})."""
    import torchvision.models as tvm

    from .classifiers import _load_state

    weights = dict(weights or {})
    builders = {"alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1),
                # as the released weights build it: aux head, and the input re-normalised inside (transform_input)
                "inception": (lambda **k: tvm.inception_v3(init_weights=False, aux_logits=True, transform_input=True,
                                                           **k),
                              tvm.Inception_V3_Weights.IMAGENET1K_V1),
                # the published code asks for DEFAULT, which torchvision resolves to IMAGENET1K_V2
                "effnet": (tvm.efficientnet_b1, tvm.EfficientNet_B1_Weights.IMAGENET1K_V2),
                "swav": (tvm.resnet50, None)}  # SwAV: a state dict from facebookresearch/swav, given as a file
    nets, skipped = {}, {}
    for family, (build, default) in builders.items():
        wanted = [m for m in metrics if m.startswith(family)]
        if not wanted:
            continue
        try:
            if family in weights:
                state = _load_state(weights[family])
                state = {k.removeprefix("module."): v for k, v in state.items()}
            elif default is None:
                raise FileNotFoundError("no weights file given (--nsd-weights swav=FILE: the SwAV ResNet-50 state "
                                        "dict)")
            else:  # torch's cache (or a download), before building: a missing file costs no network construction
                state = default.get_state_dict(progress=False, check_hash=True)
            with torch.device("meta"):  # no random init of weights about to be replaced
                net = build()
            net.load_state_dict(state, strict=family != "swav", assign=True)  # SwAV's file has no classifier head
            for module in net.modules():  # what the file did not hold (SwAV's fc, unused by the avgpool node)
                if any(t.is_meta for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]):
                    module.to_empty(device="cpu", recurse=False)
        except Exception as e:  # noqa: BLE001 - no cache, no network, a wrong file
            for m in wanted:
                skipped[m] = f"{family} weights unavailable ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            continue
        for m in wanted:
            nets[m] = torchvision_features(m, net)
    if "clip" in metrics:
        try:
            from transformers import CLIPVisionModelWithProjection

            nets["clip"] = clip_features(CLIPVisionModelWithProjection.from_pretrained(
                weights.get("clip", clip), local_files_only=True))
        except Exception as e:  # noqa: BLE001
            skipped["clip"] = f"CLIP weights unavailable ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return nets, skipped


def _stats(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)) if len(values) > 1 else 0.0,
            "per_sample": values}


#: MindEye2's weights of an "enhanced" reconstruction and its blurry reconstruction, blended before scoring
ENHANCED_WEIGHT, BLURRY_WEIGHT = 0.75, 0.25


def procedure(antialias: bool = PUBLISHED_ANTIALIAS, blurry: bool = False) -> dict:
    """How the suite scored, for the report: the published procedure unless ``antialias``."""
    out = {"resize": ("bilinear, not antialiased (torchvision 0.15/0.16 tensor Resize, as published)"
                      if not antialias else "bilinear, antialiased: NOT comparable to published rows"),
           "comparable_to_published": not antialias,
           "effnet_weights": "torchvision EfficientNet-B1 IMAGENET1K_V2 (the published DEFAULT) unless a file is given"}
    if blurry:
        out["blend"] = (f"MindEye2's enhanced evaluation: each reconstruction x {ENHANCED_WEIGHT} + its blurry "
                        f"reconstruction x {BLURRY_WEIGHT}, both at 256 px")
    return out


@torch.no_grad()
def nsd_suite(samples: torch.Tensor, ground_truth: torch.Tensor, networks: dict[str, FeatureNet] | None = None,
              skipped: dict[str, str] | None = None, embeddings: dict | None = None, metrics=NSD_METRICS,
              progress=None, antialias: bool = PUBLISHED_ANTIALIAS, blurry: torch.Tensor | None = None) -> dict:
    """The suite's report: ``{"metrics": {name: {mean, std, per_sample, chance?}}, "skipped": {...}, "settings"}``.

    samples (N, K, 3, H, W) and ground_truth (N, 3, H, W) in [0, 1]; ``embeddings`` (optional): decoded and target
    embeddings (``pred``, ``target``) for MindEye2's retrieval (300 random test items, 30 draws); ``blurry``
    (optional, (N, 3, H, W)): blurry reconstructions, blended into every sample as MindEye2 scored its enhanced
    reconstructions; ``antialias``: antialiased resizes (not the published procedure)."""
    if samples.ndim != 5 or ground_truth.ndim != 4 or len(samples) != len(ground_truth):
        raise ValueError(f"samples must be (N, K, 3, H, W) and ground truth (N, 3, H, W) with the same N; got "
                         f"{tuple(samples.shape)} and {tuple(ground_truth.shape)}")
    n, k = samples.shape[:2]
    if n < 2:
        raise ValueError("the NSD suite needs at least two test images")
    if blurry is not None and (blurry.ndim != 4 or len(blurry) != n):
        raise ValueError(f"blurry reconstructions must be (N, 3, H, W) with N = {n}; got {tuple(blurry.shape)}")
    gt = resize(ground_truth, 256, antialias)
    recs = [resize(samples[:, s], 256, antialias) for s in range(k)]
    if blurry is not None:
        low = resize(blurry, 256, antialias)
        recs = [r * ENHANCED_WEIGHT + low * BLURRY_WEIGHT for r in recs]
    networks, report = networks or {}, {"metrics": {}, "skipped": dict(skipped or {})}
    todo = [m for m in metrics if m not in report["skipped"]]
    for m in (progress(todo, desc="NSD metrics") if progress else todo):
        if m in ("pixcorr", "ssim"):
            fn = pixcorr if m == "pixcorr" else ssim_gaussian
            report["metrics"][m] = _stats([float(_pairwise_chunks(fn, r, gt, antialias=antialias).mean())
                                           for r in recs])
        elif m not in networks:
            report["skipped"][m] = "no network given"
        else:
            f_gt = networks[m](gt, antialias=antialias)
            if m in IDENTIFICATION:
                report["metrics"][m] = _stats([float(two_way_identification(networks[m](r, antialias=antialias),
                                                                            f_gt).mean()) for r in recs])
                report["metrics"][m]["chance"] = 0.5
            else:
                report["metrics"][m] = _stats([float(correlation_distance(networks[m](r, antialias=antialias),
                                                                          f_gt).mean()) for r in recs])
    if embeddings is not None:
        from .retrieval import published_retrieval

        report["metrics"] |= published_retrieval(torch.as_tensor(embeddings["pred"]).float(),
                                                 torch.as_tensor(embeddings["target"]).float())
    report["settings"] = {"n_images": n, "samples_per_image": k, "image_size": list(ground_truth.shape[-2:]),
                          "procedure": procedure(antialias, blurry is not None)}
    return report


def nsd_markdown(report: dict, row_name: str = "mindvis") -> str:
    """The report as MindEye2's Table 1: one row with its columns (skipped metrics as '-'), then details."""
    m = report["metrics"]
    cols = [(h, key) for key, h, _ in TABLE] + [("Image ret.", "image_retrieval"), ("Brain ret.", "brain_retrieval")]

    def cell(key):
        if key not in m:
            return "-"
        v = m[key]["mean"]
        return f"{v * 100:.1f} %" if key in IDENTIFICATION or key.endswith("retrieval") else f"{v:.3f}"

    s = report["settings"]
    proc = s.get("procedure", procedure())
    lines = ["# NSD metric suite", "",
             f"{s['n_images']} test images x {s['samples_per_image']} samples (metrics per sample index, then the "
             "mean), as MindEye / MindEye2's published evaluation code computes them.", "",
             f"Procedure: resizes {proc['resize']}; EffNet-B: {proc['effnet_weights']}."
             + (f" {proc['blend']}." if "blend" in proc else ""), ""]
    if not proc["comparable_to_published"]:
        lines += ["**Not comparable to published rows**: antialiased resizes (--antialias) change every downsampling "
                  "metric.", ""]
    lines += ["| model | " + " | ".join(h for h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|",
              f"| {row_name} | " + " | ".join(cell(key) for _, key in cols) + " |", "",
              "| metric | mean | std over samples | chance | better |", "|---|---|---|---|---|"]
    for key, header, higher in TABLE:
        if key in m:
            v = m[key]
            chance = v.get("chance", "")
            better = "higher" if higher else "lower"
            lines.append(f"| {header} | {v['mean']:.4f} | {v['std']:.4f} | {chance} | {better} |")
    ret = [key for key in ("image_retrieval", "brain_retrieval") if key in m]
    if ret:
        lines += ["", "| retrieval | mean | 95 % interval (mean +- 1.96 std / sqrt(draws)) | std over draws | chance | "
                  "computed as |", "|---|---|---|---|---|---|"]
        for key in ret:
            v = m[key]
            lines.append(f"| {key.replace('_', ' ')} | {v['mean']:.4f} | [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}] | "
                         f"{v['std']:.4f} | {v['chance']:.4f} | {v['computed_as']} |")
        lines.append(f"\n{m[ret[0]]['draws']} draws of {m[ret[0]]['subset']} test items (seed {m[ret[0]]['seed']}), "
                     "cosine similarity, top-1; directions as the published code computes them, named as the papers "
                     "name them.")
    if report["skipped"]:
        lines += ["", "Skipped:"] + [f"- {key}: {why}" for key, why in report["skipped"].items()]
    return "\n".join(lines) + "\n"
