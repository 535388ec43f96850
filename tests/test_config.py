"""Profiles and overrides."""

import pytest

from geotextloc.config import load_config, parse_overrides
from geotextloc.errors import ConfigError


def test_overrides_are_typed_and_unknown_keys_rejected(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("epochs: 2\nlr: 1.0e-5\nview: osm\n")
    assert load_config(path, ["epochs=5", "view=satellite"]) == {"epochs": 5, "lr": 1e-5, "view": "satellite"}
    assert parse_overrides(["lr=3e-4"])["lr"] == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="unknown setting.*epoch"):
        load_config(path, ["epoch=5"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["epochs"])


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(bad)


def test_config_choices_match_the_model_code_they_name():
    """config.py repeats these lists so that reading a config needs no torch import."""
    from geotextloc.models import epe
    from geotextloc.train import config

    assert config.EPE_MODES == epe.MODES
    assert config.POS_INITS == epe.POS_INITS
