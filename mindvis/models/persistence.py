"""``save_pretrained`` / ``from_pretrained`` for mindvis modules: a folder with ``config.json`` and
``model.safetensors`` (no pickles)."""
from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a saved {cls.__name__}: {name} is missing")
        config = json.loads((folder / CONFIG_NAME).read_text())
        saved_class = config.pop("class", cls.__name__)
        model = cls._from_config_dict(config, saved_class)
        model._load_saved_weights(load_file(folder / WEIGHTS_NAME), saved_class)
        return model
