"""The arithmetic of each sampling stage (conditioning, UNet steps, decoding), and ``auto``: a measured choice.

``fp32 | bf16 | fp16`` run every stage under autocast in that type (the solver's arithmetic, the VQ codebook lookup
and the images stay fp32). ``auto`` times each stage of the actual model at the actual batch size in every type the
device offers (fp32, and bf16 where the CPU has AVX512-BF16/AMX or the GPU supports it, fp16 on CUDA) and keeps, per
stage, the fastest, with fp32 unless another type is at least ``MARGIN`` faster. A probe takes a few calls of each
stage; its decision is cached per machine and model size in ``<cache>/precision/probe.json``, so it runs once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
STAGES = ("condition", "unet", "decode")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}
#: a reduced type must save this fraction of a stage's time to replace fp32 (which is exact)
MARGIN = 0.05
PROBE_REPEATS = 3


@dataclass(frozen=True)
class StagePrecision:
    """The autocast type of each sampling stage."""

    condition: torch.dtype = torch.float32
    unet: torch.dtype = torch.float32
    decode: torch.dtype = torch.float32

    @classmethod
    def uniform(cls, dtype: torch.dtype) -> "StagePrecision":
        return cls(dtype, dtype, dtype)

    def names(self) -> dict[str, str]:
        return {s: NAMES[getattr(self, s)] for s in STAGES}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def candidates(device: torch.device | str) -> list[str]:
    """The types worth probing on ``device``: fp32, and the reduced types it computes natively."""
    if torch.device(device).type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32"] + (["bf16"] if cpu_has_bf16() else [])


def autocast(device: torch.device | str, dtype: torch.dtype):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def machine_key(device: torch.device | str) -> dict:
    """What decides which arithmetic is fastest, apart from the model: processor, threads, torch."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"device": dev.type, "name": name, "bf16_native": cpu_has_bf16() if dev.type == "cpu" else None,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def probe_file(cache_dir=None) -> Path:
    from ..utils.cache import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "precision" / "probe.json"


def time_stage(stage: str, name: str, fn: Callable[[], object], repeats: int, timer: Callable[[], float]) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (stage ``stage`` in type ``name``) after one warm-up call (the
    minimum: other work on the machine only ever adds time)."""
    fn()  # warm-up (allocations, oneDNN kernel selection)
    times = []
    for _ in range(repeats):
        t0 = timer()
        fn()
        times.append(timer() - t0)
    return float(min(times))


def probe(stages: dict[str, Callable[[torch.dtype], object]], device, model_key: dict, cache_dir=None,
          timer: Callable[[], float] = time.perf_counter, repeats: int = PROBE_REPEATS) -> StagePrecision:
    """The fastest type per stage: ``stages[name](dtype)`` runs that stage once under that type. Cached by
    (machine, ``model_key``); a cached decision is returned without timing anything."""
    model_key = json.loads(json.dumps(model_key, sort_keys=True, default=str))  # plain data (paths, tuples -> JSON)
    key = hashlib.sha1(json.dumps({"machine": machine_key(device), "model": model_key}, sort_keys=True)
                       .encode()).hexdigest()[:16]
    path = probe_file(cache_dir)
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return StagePrecision(**{s: DTYPES[cache[key]["decision"][s]] for s in STAGES})
    names = candidates(device)
    timings = {s: {n: time_stage(s, n, lambda: fn(DTYPES[n]), repeats, timer) for n in names}
               for s, fn in stages.items()}
    decision = {}
    for s in STAGES:
        t = timings.get(s, {"fp32": 1.0})
        best = min(t, key=t.get)
        decision[s] = best if t[best] < (1 - MARGIN) * t["fp32"] else "fp32"
    cache[key] = {"decision": decision, "seconds": timings, "machine": machine_key(device), "model": model_key,
                  "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    from ..utils.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, cache)
    return StagePrecision(**{s: DTYPES[decision[s]] for s in STAGES})


def fixed(precision: str, device) -> StagePrecision | None:
    """The stages' types for a named precision; None for ``auto`` (decided by :func:`probe`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return None
    return StagePrecision.uniform(DTYPES[precision])
