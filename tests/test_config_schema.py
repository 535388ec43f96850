"""Training configs: typed schema checked before anything runs, task defaults, package data."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

import geotextloc
from geotextloc import config as profiles
from geotextloc.cli import main
from geotextloc.data import hub
from geotextloc.errors import ConfigError
from geotextloc.train.config import RULES, from_dict, load_config, task_defaults

ROOT = Path(__file__).parents[1]
RESOLVED = Path(__file__).parent / "resolved_profiles.json"
TRAINING = ("crosstext2loc", "crosstext2loc_pretrain", "geobridge",
            "crosstext2loc_clip", "crosstext2loc_siglip", "crosstext2loc_blip", "crosstext2loc_vilt",  # + the papers' baselines
            "crosstext2loc_street", "crosstext2loc_fusion")  # + the query-modality rows
HEAD = "# a config with one mistake\nmodel: geotextloc-tiny\n"  # the mistake starts on line 3

# (name, file text after HEAD, overrides, the key the error must name, its line in the file or None)
BAD = [
    ("word-for-int", "train_limit: ten\n", [], "train_limit", 3),
    ("word-for-size", "image_size: big\n", [], "image_size", 3),
    ("word-for-bool", "augment: maybe\n", [], "augment", 3),
    ("word-for-epochs", "eval_every: two\n", [], "eval_every", 3),
    ("unknown-key", "epoch: 3\n", [], "epoch", 3),
    ("zero-batch", "batch_size: 0\n", [], "batch_size", 3),
    ("negative-epochs", "epochs: -2\n", [], "epochs", 3),
    ("zero-lr", "lr: 0\n", [], "lr", 3),
    ("negative-lr", "lr: -1.0e-4\n", [], "lr", 3),
    ("share-above-one", "task: geobridge\nmissing_share: 1.5\n", [], "missing_share", 4),
    ("bad-epe", "epe: stretch\n", [], "epe", 3),
    ("bad-mode", "task: geobridge\nmode: both\n", [], "mode", 4),
    ("bad-task", "task: retrieval\n", [], "task", 3),
    ("bad-precision", "precision: fp8\n", [], "precision", 3),
    ("bad-view", "view: street\n", [], "view", 3),
    ("list-for-int", "batch_size: [8, 16]\n", [], "batch_size", 3),
    ("mapping-for-str", "pretrained: {a: 1}\n", [], "pretrained", 3),
    ("numbers-for-versions", "versions: [1, 2]\n", [], "versions", 3),
    ("null-for-str", "data_root: null\n", [], "data_root", 3),
    ("negative-seed", "seed: -1\n", [], "seed", 3),
    ("set-twice", "epochs: 2\nepochs: 3\n", [], "epochs", 4),
    ("yaml-syntax", "versions: [NewYork\nepochs: 2\n", [], None, 4),
    ("rule-across-keys", "cache_images: true\n", [], "cache_images", 3),
    ("override-zero-epochs", "epochs: 2\n", ["epochs=0"], "epochs", None),
    ("override-unknown", "epochs: 2\n", ["epoch=3"], "epoch", None),
    ("override-bad-choice", "", ["view=street"], "view", None),
]


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("name, text, overrides, key, line", BAD, ids=[b[0] for b in BAD])
def test_a_bad_config_stops_the_cli_with_one_line_naming_file_key_and_line(tmp_path, capsys, name, text,
                                                                         overrides, key, line):
    path, out = tmp_path / f"{name}.yaml", tmp_path / "run"
    path.write_text(HEAD + text + f"out_dir: {out}\n")
    code, err = run_cli(["train", "--config", str(path), *overrides], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"geotextloc: error: {path}") and "Traceback" not in err[0]
    if key is not None:
        assert key in err[0]
    assert (f"{path}:{line}: " in err[0]) if line else (f"{path}, override: " in err[0])
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("text, says", [
    ("", "empty config"),
    ("# only a comment\n", "empty config"),
    ("- epochs: 3\n- lr: 1.0e-3\n", "top level, found a list"),
    ("just some words\n", "top level, found the value"),
])
def test_a_file_that_is_not_a_mapping_of_settings_is_one_line(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = run_cli(["train", "--config", str(path), f"out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and says in err[0]
    assert not (tmp_path / "run").exists()


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + "eval_every: two\n" + f"out_dir: {tmp_path / 'run'}\n")
    done = subprocess.run([sys.executable, "-m", "geotextloc", "train", "--config", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"geotextloc: error: {path}:3: eval_every='two'; expected an integer >= 0"]
    assert not (tmp_path / "run").exists()


def test_values_are_typed_and_yaml_1_1_numbers_read_as_numbers():
    cfg = from_dict({"lr": "1e-4", "weight_decay": 0, "versions": "Helsinki-mixed"})
    assert (cfg.lr, cfg.weight_decay, cfg.versions) == (1e-4, 0.0, ["Helsinki-mixed"])
    assert isinstance(cfg.weight_decay, float)
    for bad in ({"epochs": 3.0}, {"epochs": True}, {"lr": True}, {"lr": "fast"}, {"augment": 1},
                {"regions": []}, {"text_dropout": 1.0}, {"val_share": -0.1}, {"model": ""}):
        with pytest.raises(ConfigError, match=f"config: {next(iter(bad))}="):
            from_dict(bad)


def test_every_key_has_a_rule_and_every_default_passes_it():
    for task in ("crosstext2loc", "geobridge"):
        defaults = task_defaults(task)
        assert list(defaults) == list(RULES)
        for key, value in defaults.items():
            assert RULES[key].accept(value) == (True, value), key


def resolved_profiles() -> dict:
    """Every profile's training configs, resolved, and the other YAML files as read."""
    out: dict = {"train": {}, "raw": {}}
    for profile in profiles.PROFILES:
        for file in sorted((profiles.configs_dir() / profile).iterdir(), key=lambda f: f.name):
            name = file.name.removesuffix(".yaml")
            if name in TRAINING:
                out["train"][f"{profile}/{name}"] = [list(kv) for kv in from_dict(
                    profiles.load_profile(name, profile)).to_dict().items()]
            else:
                out["raw"][f"{profile}/{name}"] = dict(profiles.load_profile(name, profile))
    return out


def test_trimmed_profiles_resolve_to_exactly_the_recorded_configs():
    want = json.loads(RESOLVED.read_text())
    got = resolved_profiles()
    assert sorted(got["train"]) == sorted(want["train"]) and sorted(got["raw"]) == sorted(want["raw"])
    for name in want["train"]:  # same keys, same order, same values
        assert got["train"][name] == want["train"][name], name
    assert got["raw"] == want["raw"]


def test_profile_files_hold_only_what_differs_from_their_task_defaults():
    for profile in profiles.PROFILES:
        for name in TRAINING:
            path = profiles.config_path(name, profile)
            if not path.is_file():
                continue
            values = profiles.read_yaml(path)
            defaults = task_defaults(values.get("task", "crosstext2loc"))
            same = [k for k, v in values.items() if k != "task" and RULES[k].accept(v)[1] == defaults[k]]
            assert not same, f"{path}: {same} equal the defaults"


def test_profiles_and_the_card_template_load_from_the_package_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here or above
    monkeypatch.delenv("GEOTEXTLOC_CONFIGS", raising=False)
    package = Path(geotextloc.__file__).parent
    for profile in profiles.PROFILES:
        path = profiles.config_path("crosstext2loc", profile)
        assert Path(str(path)).is_relative_to(package)
        assert from_dict(profiles.load_profile("crosstext2loc", profile)).task == "crosstext2loc"
    assert load_config(profiles.config_path("geobridge", "tiny"), ["epochs=2"]).epochs == 2
    assert Path(str(hub.CARD_TEMPLATE)).is_relative_to(package)
    assert hub.CARD_TEMPLATE == resources.files("geotextloc.data") / "cards" / "cvg-text.md"
    assert yaml.safe_load(hub.CARD_TEMPLATE.read_text().split("---\n")[1])["pretty_name"]


def test_the_checkout_configs_link_is_the_package_folder_and_the_wheel_ships_it():
    assert (ROOT / "configs").resolve() == (ROOT / "geotextloc" / "configs").resolve()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["geotextloc"]
    package = ROOT / "geotextloc"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    data = [*package.glob("configs/**/*"), *package.glob("data/cards/*")]
    missing = [str(p.relative_to(package)) for p in data if p.is_file() and p not in shipped]
    assert not missing, f"pyproject.toml's package-data misses {missing}"


def test_a_run_folder_holds_its_resolved_config_which_reads_back(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic_records import make_release

    from geotextloc.train.loop import train

    torch.set_num_threads(1)
    train_records, test_records = make_release(tmp_path / "release", n_train=16, n_test=8)
    cfg = from_dict(dict(model="geotextloc-tiny", pretrained=None, context_length=96, image_size=32, batch_size=8,
                         epochs=1, lr=1e-3, device="cpu", eval_scope=8, out_dir=str(tmp_path / "run")))
    train(cfg, train_records, test_records)
    saved = tmp_path / "run" / "config.yaml"
    assert load_config(saved) == cfg
    assert list(yaml.safe_load(saved.read_text())) == list(cfg.to_dict())


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:  # record the profiles as they resolve now
    data = resolved_profiles()
    lines = ["{", f' "_comment": {json.dumps(json.loads(RESOLVED.read_text())["_comment"])},', ' "train": {']
    for i, (name, pairs) in enumerate(data["train"].items()):
        rows = ",\n".join(f"   {json.dumps(kv)}" for kv in pairs)
        lines.append(f'  {json.dumps(name)}: [\n{rows}\n  ]' + ("," if i < len(data["train"]) - 1 else ""))
    lines += [" },", f' "raw": {json.dumps(data["raw"])}', "}"]
    RESOLVED.write_text("\n".join(lines) + "\n")
