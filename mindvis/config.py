"""Structured configs: dataclass schemas, YAML presets and strict dotlist overrides (OmegaConf).

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A preset or override does not fit the config schema."""


#: Words YAML reads as booleans; in an override they are kept as the word, so ``train.mixed_precision=no`` stays
#: "no" (a boolean key still accepts the word).
_YAML_BOOLEAN_WORDS = {"y", "yes", "n", "no", "on", "off"}


def _quote_boolean_words(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key}='{value}'" if value.lower() in _YAML_BOOLEAN_WORDS else override


def check_settings(rules) -> None:
    """Settings validated up front: ``rules`` are (ok, key, value, allowed); the first failing one is a ConfigError
    naming the key, the value and what is allowed."""
    for ok, key, value, allowed in rules:
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: must be {allowed}")


MIXED_PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = ("none", "tensorboard", "wandb")


def _merge(base: DictConfig, other, what: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e.msg if hasattr(e, "msg") else e).splitlines()[0]  # OmegaConf appends a multi-line context
        raise ConfigError(f"{what}: {msg}" + (f" (key: {key})" if key else "")) from None


def build_config(schema: type, preset: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                 defaults: dict | None = None) -> DictConfig:
    """Schema defaults <- ``defaults`` (e.g. what a CLI flag implies) <- YAML ``preset`` <- ``overrides``.

    ``overrides`` are ``key.sub=value`` strings. The result is in struct mode: no new keys.
    """
    cfg = OmegaConf.structured(schema)
    if defaults:
        cfg = _merge(cfg, OmegaConf.create(defaults), "defaults")
    if preset:
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"config preset not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # noqa: BLE001 - YAML syntax errors come in many types
            raise ConfigError(f"{path}: not a valid YAML config ({e})") from None
        cfg = _merge(cfg, loaded, str(path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    if overrides:
        try:
            dot = OmegaConf.from_dotlist([_quote_boolean_words(o) for o in overrides])
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from None
        cfg = _merge(cfg, dot, "command-line override")
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (for JSON, checkpoints, trackers)."""
    return OmegaConf.to_container(cfg, resolve=True)


def to_object(cfg: DictConfig):
    """The config as instances of its dataclasses."""
    return OmegaConf.to_object(cfg)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    from .utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def load_saved_config(schema: type, path: str | os.PathLike) -> DictConfig:
    """Re-read a config that mindvis saved (strict: it must still fit the schema)."""
    return build_config(schema, preset=path)


def resolve_run_config(schema: type, stage: str, args, selector: str, flags: dict[str, str | None]) -> DictConfig:
    """The config of a training command.

    A resumed run keeps its saved ``config.yaml``. Otherwise the preset is ``--config`` or the one named
    after the data selection (``args.selection``, default ``synthetic``), whose choice is written to
    ``selector`` unless ``--config`` alone picked the preset. Then the ``key=value`` overrides, then the
    flags that set keys (``flags``: key -> value or None).
    """
    from .configs import preset_path

    overrides = list(args.overrides)
    if args.resume:
        preset = f"{args.resume}/config.yaml"
    else:
        selection = args.selection or "synthetic"
        preset = str(preset_path(stage, args.config or selection))
        if args.selection is not None or args.config is None:
            overrides.insert(0, f"{selector}={selection}")
    overrides += [f"{key}={value}" for key, value in flags.items() if value]
    return build_config(schema, preset, overrides)
