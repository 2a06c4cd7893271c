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


def check_unused(cfg: DictConfig, schema: type, unused: dict[str, str], prog: str, prefix: str = "") -> None:
    """Keys of a shared schema that ``prog`` never reads (``unused``: key -> whose setting it is) must keep the
    schema's default: one set to anything else is a ConfigError naming it, never silently ignored."""
    defaults = OmegaConf.structured(schema)
    for key, whose in unused.items():
        value = OmegaConf.select(cfg, key)
        if value != OmegaConf.select(defaults, key):
            raise ConfigError(f"{prefix}{key}={value!r} is not used by {prog} ({whose}); remove it")


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


#: settings a resumed run may change: where things are written or cached, workers, trackers; nothing that changes
#: what is computed
RESUME_MAY_CHANGE = ("output_dir", "data.cache_dir", "data.num_workers", "train.tracker")


def flat_settings(cfg: DictConfig) -> dict[str, Any]:
    """``{"a.b.c": value}`` of every leaf setting (lists are values)."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_plain(cfg), "")
    return out


def changed_settings(before: DictConfig, after: DictConfig, free: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """(key, value before, value after) of every setting that differs, except the keys (or key prefixes) ``free``."""
    a, b = flat_settings(before), flat_settings(after)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in free)]


def resolve_run_config(schema: type, stage: str, args, selector: str, flags: dict[str, str | None]) -> DictConfig:
    """The config of a training command.

    A resumed run keeps its saved ``config.yaml``: overrides or flags that would change a setting of the run
    (other than :data:`RESUME_MAY_CHANGE`) are a ConfigError naming each key. Otherwise the preset is ``--config``
    or the one named after the data selection (``args.selection``, default ``synthetic``), whose choice is written
    to ``selector`` unless ``--config`` alone picked the preset. Then the ``key=value`` overrides, then the flags
    that set keys (``flags``: key -> value or None; a flag given is applied, even 0 or an empty string).
    """
    from .configs import preset_path

    overrides = list(args.overrides)
    if args.resume:
        if args.config:
            raise ConfigError(f"--config {args.config} picks the settings of a new run; --resume {args.resume} "
                              "continues with the run's own config.yaml")
        preset = f"{args.resume}/config.yaml"
        if args.selection is not None:  # checked against the run's below
            overrides.insert(0, f"{selector}={args.selection}")
    else:
        selection = args.selection or "synthetic"
        preset = str(preset_path(stage, args.config or selection))
        if args.selection is not None or args.config is None:
            overrides.insert(0, f"{selector}={selection}")
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    cfg = build_config(schema, preset, overrides)
    if args.resume:
        changed = changed_settings(build_config(schema, preset), cfg, RESUME_MAY_CHANGE)
        if changed:
            said = "; ".join(f"{k}={new!r} (the run has {old!r})" for k, old, new in changed)
            raise ConfigError(f"--resume {args.resume}: {said}: a resumed run keeps the settings it was made with; "
                              "start a new run (without --resume) to change them")
    return cfg
