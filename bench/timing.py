"""What the benchmark scripts share: timing training steps with peak memory, and naming the device."""
from __future__ import annotations

import platform
import resource
import time


def time_steps(step, steps: int, device: str, warmup: int = 1) -> dict:
    """Seconds per call of ``step`` after ``warmup`` calls, with peak CPU RSS and (on CUDA) peak GPU memory."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    out = {"step_s": (time.perf_counter() - t) / steps,
           "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if cuda:
        out["peak_gpu_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def device_label(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
