"""Experiment profiles: YAML files shipped in the package, ``geotextloc/configs/<profile>/<name>.yaml``.

Profiles: ``smoke`` (seconds; what CI runs), ``tiny`` (CPU minutes on the embedded data with
the pretrained towers: the numbers in ``reports/``), ``scratch`` (the random-init tiny model in
two stages, for comparison) and ``paper`` (GPU, the papers' settings). They are package data,
read with :mod:`importlib.resources`, so an installed wheel has them too; the checkout's
top-level ``configs`` links to the same folder (``--config configs/tiny/crosstext2loc.yaml``).
``$GEOTEXTLOC_CONFIGS`` points to another folder of the same layout.

A config is a flat mapping of plain values; ``key=value`` overrides are parsed as YAML
scalars. :func:`read_yaml` keeps the line of every key, so errors name ``file:line``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from geotextloc.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PROFILES = ("smoke", "tiny", "scratch", "paper")


def configs_dir() -> Traversable:
    """``$GEOTEXTLOC_CONFIGS``, else the profiles inside the package (``geotextloc/configs``)."""
    env = os.environ.get("GEOTEXTLOC_CONFIGS")
    return Path(env) if env else resources.files("geotextloc") / "configs"


def config_path(name: str, profile: str) -> Traversable:
    """The file of experiment ``name`` in ``profile``."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return configs_dir() / profile / f"{name}.yaml"


class Settings(dict):
    """A config file's top-level mapping that remembers where each value came from."""

    def __init__(self, values: dict | None = None, source: str = "config", lines: dict[str, int] | None = None):
        super().__init__(values or {})
        self.source = source
        self.lines = dict(lines or {})  # key -> line in the file (1-based)
        self.overridden: set[str] = set()  # keys set by key=value overrides

    def override(self, values: dict[str, Any]) -> None:
        """Apply ``key=value`` overrides (their errors then say "override")."""
        self.update(values)
        self.overridden |= set(values)

    def where(self, key: str) -> str:
        """``file:line`` of ``key``, ``file, override``, or the file alone (a key it lacks)."""
        if key in self.overridden:
            return f"{self.source}, override"
        if key in self.lines:
            return f"{self.source}:{self.lines[key]}"
        return self.source


def read_yaml(path: str | Path | Traversable) -> Settings:
    """The top-level mapping of a YAML file with the line of every key; errors are one line."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; the profiles are configs/<profile>/<name>.yaml "
                          f"(profiles: {', '.join(PROFILES)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{path}: empty config; write its settings as `key: value` lines")
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else f"the value {root.value!r}"
            raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected `key: value` settings at the "
                              f"top level, found {kind}")
        lines: dict[str, int] = {}
        for key, _ in root.value:
            line = key.start_mark.line + 1
            if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
                raise ConfigError(f"{path}:{line}: a setting's key must be a name, not {key.value!r}")
            if key.value in lines:
                raise ConfigError(f"{path}:{line}: {key.value} is set twice (also on line "
                                  f"{lines[key.value]}); keep one")
            lines[key.value] = line
        values = loader.construct_document(root)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = err.problem or err.context
        if err.context and err.context_mark and err.context_mark.line != mark.line:
            what += f", {err.context} from line {err.context_mark.line + 1}"
        raise ConfigError(f"{path}:{mark.line + 1}: not valid YAML ({what}); fix the file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
    finally:
        loader.dispose()
    return Settings(values, str(path), lines)


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


def load_config(path: str | Path | Traversable, overrides: Iterable[str] | dict[str, Any] = ()) -> Settings:
    """Read a YAML config and apply overrides (keys the file lacks are an error)."""
    config = read_yaml(path)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    unknown = sorted(set(extra) - set(config))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(config))}")
    config.override(extra)
    return config


def load_profile(name: str, profile: str, overrides: Iterable[str] | dict[str, Any] = ()) -> Settings:
    """``load_config(configs/<profile>/<name>.yaml, overrides)``."""
    return load_config(config_path(name, profile), overrides)
