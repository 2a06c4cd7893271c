"""What ``mindvis-eval`` reads, checked before anything is scored: image arrays (the scale told by the dtype and the
values, never divided twice), decoded embeddings, and the NSD suite's ``--nsd-weights`` files (each named file loads
as its network's state dict, or the command fails in one line)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.fmri import DataError, error_summary

#: the networks ``--nsd-weights NAME=FILE`` takes: name -> (metrics it serves, what the file is)
NSD_WEIGHTS = {"alexnet": (("alexnet2", "alexnet5"), "torchvision AlexNet state dict"),
               "inception": (("inception",), "torchvision Inception v3 state dict (with its aux head)"),
               "effnet": (("effnet",), "torchvision EfficientNet-B1 state dict"),
               "swav": (("swav",), "SwAV ResNet-50 state dict (facebookresearch/swav; its fc head may be absent)"),
               "clip": (("clip",), "CLIP ViT-L/14 folder (transformers CLIPVisionModelWithProjection)")}


def float_images(x: np.ndarray, where: str, layout: str) -> torch.Tensor:
    """Channels-last images (``layout`` names the expected shape, e.g. ``"(N, K, H, W, 3)"``) as float
    (..., 3, H, W) in [0, 1]. uint8 is 0..255; other integers must hold 0..255; floats must already be in [0, 1]
    (divided by nothing); NaN/Inf, negative values, booleans and channel-first arrays are refused in one line
    naming ``where`` (the file and key), the value and what was expected."""
    x = np.asarray(x)
    ndim = layout.count(",") + 1
    if x.ndim != ndim or x.shape[-1] != 3:
        hint = " (channels first? mindvis-sample writes channels last)" if x.ndim == ndim and x.shape[-3] == 3 else ""
        raise DataError(f"{where}: images of shape {x.shape}; expected {layout}, RGB channels last{hint}")
    if x.dtype == np.uint8:
        return torch.from_numpy(x).float().div_(255).movedim(-1, -3)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: {x.dtype} values from {lo} to {hi}; expected 0..255 (uint8 images) or floats "
                            "in [0, 1]")
        return torch.from_numpy(x.astype(np.float32)).div_(255).movedim(-1, -3)
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"{where}: {int(bad.sum())} NaN/Inf value(s) (the first at index {first}: "
                            f"{x[first]}); expected finite images")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: {x.dtype} values from {lo:g} to {hi:g}; float images must be in [0, 1] "
                            "(0..255 images as uint8)")
        return torch.from_numpy(x.astype(np.float32)).movedim(-1, -3)
    raise DataError(f"{where}: an array of {x.dtype}; expected images as uint8 (0..255) or floats in [0, 1]")


def sample_arrays(arrays: dict, path) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples (N, K, 3, H, W), ground truth (N, 3, H, W)) in [0, 1] from a samples.npz, every check named."""
    samples = float_images(arrays["samples"], f"{path}: samples", "(N, K, H, W, 3)")
    truth = float_images(arrays["ground_truth"], f"{path}: ground_truth", "(N, H, W, 3)")
    if len(samples) != len(truth):
        raise DataError(f"{path}: {len(samples)} sets of samples for {len(truth)} ground-truth images; expected one "
                        "set per ground truth")
    return samples, truth


def check_embeddings(pred: np.ndarray, target: np.ndarray, n_images: int, path) -> dict[str, np.ndarray]:
    """Decoded (``contrastive``) and target embeddings of the test images: 2-D, the same dimension, finite, one per
    test image."""
    for key, a in (("contrastive", pred), ("target", target)):
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{path}: {key} has shape {a.shape} ({a.dtype}); expected (test images, dimensions) numbers")
        if not np.isfinite(a).all():
            raise DataError(f"{path}: {key} holds NaN/Inf; expected finite embeddings")
    if pred.shape[1] != target.shape[1]:
        raise DataError(f"{path}: contrastive embeddings have {pred.shape[1]} dimensions, target {target.shape[1]}; "
                        "expected the same embedding space")
    if not len(pred) == len(target) == n_images:
        raise DataError(f"{path}: {len(pred)} decoded and {len(target)} target embeddings for {n_images} test images")
    return {"pred": pred, "target": target}


def parse_nsd_weights(items: list[str]) -> dict[str, str]:
    """``NAME=FILE`` items as {name: file}; an unknown name, a repeated one or an item without ``=`` is a
    DataError."""
    out = {}
    for item in items:
        name, eq, file = item.partition("=")
        if not eq or not name or not file:
            raise DataError(f"--nsd-weights takes NAME=FILE, got {item!r}")
        if name not in NSD_WEIGHTS:
            raise DataError(f"--nsd-weights {item}: unknown network {name!r}; expected one of {', '.join(NSD_WEIGHTS)}")
        if name in out:
            raise DataError(f"--nsd-weights names {name} twice")
        out[name] = file
    return out


def _architecture(name: str) -> torch.nn.Module:
    """The network ``load_networks`` builds for ``name``, on the meta device (no memory, no initialisation)."""
    import torchvision.models as tvm

    build = {"alexnet": tvm.alexnet,
             "inception": lambda: tvm.inception_v3(init_weights=False, aux_logits=True, transform_input=True),
             "effnet": tvm.efficientnet_b1, "swav": tvm.resnet50}[name]
    with torch.device("meta"):
        return build()


def _shapes(path: Path) -> dict[str, tuple]:
    """{key: shape} of a state-dict file, read without running anything: safetensors' header, or a torch file of
    tensors through the restricted unpickler."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DataError(f"{path}: not a readable safetensors file ({error_summary(e)})") from None
    from ..compat.safe_pickle import load_torch_checkpoint

    state = load_torch_checkpoint(path, "state dict", admit=())
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return {k: tuple(v.shape) for k, v in state.items()}


def check_nsd_weights(weights: dict[str, str]) -> None:
    """Every file named with ``--nsd-weights`` is a state dict of its network (keys and shapes), read safely; a
    one-line DataError names the network, the file and what is wrong. CLIP's folder is checked when it loads."""
    for name, file in weights.items():
        path = Path(file)
        what = NSD_WEIGHTS[name][1]
        if name == "clip":  # a folder or a cached hub id: checked when it loads (named_weights_failed)
            continue
        if not path.is_file():
            raise DataError(f"--nsd-weights {name}={file}: no such file; expected a {what}")
        try:
            got = {k.removeprefix("module."): v for k, v in _shapes(path).items()}
        except DataError as e:
            raise DataError(f"--nsd-weights {name}={file}: {str(e).removeprefix(f'{path}: ')}") from None
        want = {k: tuple(v.shape) for k, v in _architecture(name).state_dict().items()}
        missing = [k for k in want if k not in got and not (name == "swav" and k.startswith("fc."))]
        unexpected = [k for k in got if k not in want]
        wrong = [f"{k} {got[k]} (expected {want[k]})" for k in want if k in got and got[k] != want[k]]
        if missing or unexpected or wrong:
            said = [f"{len(missing)} missing key(s) (e.g. {missing[0]})" if missing else "",
                    f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                    f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
            raise DataError(f"--nsd-weights {name}={file}: not a {what}: " + ", ".join(s for s in said if s))


def named_weights_failed(weights: dict[str, str], skipped: dict[str, str]) -> None:
    """A network the user named that still did not load is an error, never a skipped metric."""
    for name in weights:
        for metric in NSD_WEIGHTS[name][0]:
            if metric in skipped:
                raise DataError(f"--nsd-weights {name}={weights[name]}: {skipped[metric]}")


#: the start of the file name torchvision keeps each default network's weights under, and its --nsd-weights name
_DEFAULT_FILES = {"alexnet": "alexnet", "inception": "inception", "efficientnet": "effnet", "resnet50": "swav"}


def refused_downloads(refused: list[tuple[str, str]]) -> list[str]:
    """One line per default network whose weights are not in torch's cache (nothing was downloaded): the file it
    needs and the flag that takes a local one."""
    lines = []
    for _url, dst in refused:
        name = next((n for prefix, n in _DEFAULT_FILES.items() if Path(dst).name.startswith(prefix)), "NAME")
        lines.append(f"{dst} is not on this machine and nothing is downloaded: put the file there or pass "
                     f"--nsd-weights {name}=FILE")
    return lines
