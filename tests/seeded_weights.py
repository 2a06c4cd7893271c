"""Seeded random weights for the NSD suite's networks, identical wherever they are made.

The reference test of the NSD suite (tests/test_nsd_suite_reference.py) compares mindvis with MindEye's own metric
code run by tools/reference_fixtures/nsd_metrics.py in another environment (older torch and torchvision). Real
weights cannot be committed (hundreds of MB) nor downloaded here, so both sides fill the published architectures with
the same deterministic values: each tensor from ``numpy.random.default_rng([seed, crc32(name)])``, so a value depends
only on the seed, the tensor's name and its shape (never on torch, torchvision or the order of creation):

* weights with two or more dimensions (convolutions, linear layers): float32 standard normals times sqrt(2 / fan_in)
  (He), fan_in = the product of all but the first dimension;
* biases 0; normalisation weights (one-dimensional ``weight``) 1; BatchNorm running means 0, running variances 1,
  ``num_batches_tracked`` 0.

The generator imports this file by path; keep it free of anything but numpy, zlib, hashlib and torchvision.
"""
from __future__ import annotations

import hashlib
import zlib

import numpy as np

SEED = 20231129
FAMILIES = ("alexnet", "inception", "effnet", "swav")


def build(family: str, device: str | None = None):
    """The torchvision architecture a published metric loads its weights into (``device="meta"``: shapes only)."""
    import torch
    import torchvision.models as tvm

    with torch.device(device or "cpu"):
        return _build(tvm, family)


def _build(tvm, family: str):

    if family == "alexnet":
        return tvm.alexnet()
    if family == "inception":  # as torchvision builds it for its ImageNet weights
        return tvm.inception_v3(aux_logits=True, transform_input=True, init_weights=False)
    if family == "effnet":
        return tvm.efficientnet_b1()
    if family == "swav":  # SwAV's torch hub entry point: torchvision's resnet50, SwAV's state dict (no fc)
        return tvm.resnet50()
    raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")


def fill(name: str, shape: tuple, dtype: str, seed: int = SEED) -> np.ndarray:
    """The value of one tensor (see the module's docstring)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=dtype)
    if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
        return np.ones(shape, dtype=dtype)
    if leaf in ("running_mean", "bias"):
        return np.zeros(shape, dtype=dtype)
    fan_in = int(np.prod(shape[1:]))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))).astype(dtype)


def seeded_state_dict(family: str, seed: int = SEED) -> dict[str, np.ndarray]:
    """{name: array} for every tensor of the family's architecture (SwAV: without ``fc``, as SwAV's file)."""
    out = {}
    for name, t in build(family, "meta").state_dict().items():
        if family == "swav" and name.startswith("fc."):
            continue
        out[name] = fill(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), seed)
    return out


def digest(state: dict[str, np.ndarray]) -> str:
    """sha256 over the sorted names, shapes, dtypes and bytes: the same digest means the same weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.ascontiguousarray(state[name])
        h.update(f"{name}:{a.shape}:{a.dtype}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()
