"""Offline by default: pretrained weights come from local files and caches only, never from a download.

:func:`no_downloads` turns every download a library would start into a one-line error that says where the file
belongs: torch.hub's (torchvision's and timm's URL weights) and the Hugging Face hub's (timm's and transformers'
hub weights; its cache still serves). :func:`timm_weights_location` says where timm looks for a model's weights.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path


class WeightsNotHere(FileNotFoundError):
    """Pretrained weights that are neither given as a file nor in a local cache (nothing is downloaded)."""


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (torchvision, timm's URL weights) keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, or ``$HF_HOME/hub``)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers brings it
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


class _Quiet:
    """A stream that passes everything on except torch.hub's announcement of a download that will not happen."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if text.startswith("Downloading: "):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def torchvision_cached(weights) -> Path:
    """The file torch.hub keeps a torchvision ``Weights`` enum member in (it may not exist)."""
    return torch_hub_checkpoints() / os.path.basename(weights.url)


@contextmanager
def no_downloads(hint: str = ""):
    """Inside: a torch.hub download raises :class:`WeightsNotHere` naming the file it would have written (``hint``
    appended: the flag that takes a local file), and the Hugging Face hub is offline (its cache still serves)."""
    import torch.hub

    refused = []

    def refuse(url, dst, *args, **kwargs):
        refused.append((url, dst))
        # torch.hub downloads into "<dst>.partial"-style temporaries; name the final file
        raise WeightsNotHere(f"{dst} is not on this machine and nothing is downloaded: put the file there"
                             + (f" or {hint}" if hint else ""))

    saved_download, saved_streams = torch.hub.download_url_to_file, (sys.stdout, sys.stderr)
    torch.hub.download_url_to_file = refuse
    # torch.hub announces 'Downloading: "URL" to FILE' before it calls the above (on stdout or stderr by version)
    sys.stdout, sys.stderr = _Quiet(sys.stdout), _Quiet(sys.stderr)
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        constants = None
    saved_offline = constants.HF_HUB_OFFLINE if constants is not None else None
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield refused
    finally:
        torch.hub.download_url_to_file = saved_download
        if isinstance(sys.stdout, _Quiet):
            sys.stdout = saved_streams[0]
        if isinstance(sys.stderr, _Quiet):
            sys.stderr = saved_streams[1]
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_offline


def timm_weights_location(name: str) -> str:
    """Where timm reads ``name``'s pretrained weights from without a download: the hub snapshot folder in the
    Hugging Face cache, or the file in torch.hub's checkpoints folder."""
    try:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name: timm says so when the model is built
        cfg = None
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        repo = cfg.hf_hub_id.split("@")[0]
        return f"the Hugging Face cache: {hf_hub_cache() / ('models--' + repo.replace('/', '--'))}"
    if cfg is not None and getattr(cfg, "url", None):
        return f"torch's cache: {torch_hub_checkpoints() / os.path.basename(cfg.url.split('?')[0])}"
    return f"the Hugging Face cache ({hf_hub_cache()}) or torch's ({torch_hub_checkpoints()})"
