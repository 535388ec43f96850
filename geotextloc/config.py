"""Experiment profiles: plain YAML files under ``configs/<profile>/<name>.yaml``.

Profiles: ``smoke`` (seconds; what CI runs), ``tiny`` (CPU minutes on the embedded data with
the pretrained towers: the numbers in ``reports/``), ``scratch`` (the random-init tiny model in
two stages, for comparison) and ``paper`` (GPU, the papers' settings). A config is a flat
mapping of plain values; ``key=value`` overrides are parsed as YAML scalars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from geotextloc.errors import ConfigError

PROFILES = ("smoke", "tiny", "scratch", "paper")


def configs_dir() -> Path:
    """``$GEOTEXTLOC_CONFIGS``, else the first ``configs/`` found from the cwd upwards."""
    env = os.environ.get("GEOTEXTLOC_CONFIGS")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "configs").is_dir():
            return folder / "configs"
    raise ConfigError(
        f"no configs/ folder above {here}; run from the geotextloc checkout or set GEOTEXTLOC_CONFIGS"
    )


def config_path(name: str, profile: str) -> Path:
    """The file of experiment ``name`` in ``profile``."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return configs_dir() / profile / f"{name}.yaml"


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "lr=1e-4"]`` -> ``{"epochs": 3, "lr": 1e-4}``."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            parsed[key.strip()] = _number_or_str(yaml.safe_load(value))
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not a YAML scalar") from None
    return parsed


def _number_or_str(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` as a string; users mean the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path, overrides: Iterable[str] | dict[str, Any] = ()) -> dict[str, Any]:
    """Read a YAML config and apply overrides (unknown keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; see configs/<profile>/ for the available ones")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first}); fix the file") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    unknown = sorted(set(extra) - set(config))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(config))}")
    return {**config, **extra}


def load_profile(name: str, profile: str, overrides: Iterable[str] | dict[str, Any] = ()) -> dict[str, Any]:
    """``load_config(configs/<profile>/<name>.yaml, overrides)``."""
    return load_config(config_path(name, profile), overrides)
