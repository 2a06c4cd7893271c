"""``save_pretrained`` / ``from_pretrained`` for mindvis modules: a folder with ``config.json`` and
``model.safetensors`` (no pickles)."""
from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def read_safetensors(path) -> dict:
    """The tensors of a ``.safetensors`` file, or a DataError naming the file when it is truncated or corrupt."""
    from safetensors.torch import load_file

    from ..data.fmri import DataError, error_summary

    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise DataError(f"{path}: corrupt or truncated safetensors file ({error_summary(e)})") from None


def read_json(path) -> dict:
    """A JSON object, or a DataError naming the file."""
    from ..data.fmri import DataError

    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


class PretrainedMixin:
    """Subclasses say how their config becomes JSON (``_config_dict``) and back (``_from_config_dict``)."""

    def _config_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str):
        raise NotImplementedError

    def _load_saved_weights(self, state_dict: dict, saved_class: str) -> None:
        self.load_state_dict(state_dict)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        from ..utils.io import atomic_write, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
        atomic_write_json(folder / CONFIG_NAME, {"class": type(self).__name__, **self._config_dict()})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike):
        from ..data.fmri import DataError

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a saved {cls.__name__}: {name} is missing")
        config = read_json(folder / CONFIG_NAME)
        saved_class = config.pop("class", cls.__name__)
        try:
            model = cls._from_config_dict(config, saved_class)
        except (TypeError, ValueError, KeyError) as e:
            raise DataError(f"{folder / CONFIG_NAME}: not a {cls.__name__} config ({type(e).__name__}: {e})") from None
        weights = read_safetensors(folder / WEIGHTS_NAME)
        try:
            model._load_saved_weights(weights, saved_class)
        except (RuntimeError, KeyError) as e:
            raise DataError(f"{folder / WEIGHTS_NAME}: weights do not fit the {cls.__name__} of {CONFIG_NAME} "
                            f"({str(e).splitlines()[0]})") from None
        return model.eval()  # as diffusers and transformers load models: training code calls train() itself
