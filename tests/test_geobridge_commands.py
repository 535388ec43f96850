"""A GeoBridge checkpoint through every command that loads a model: evaluate (all directions,
and text -> satellite on a release city), index, search and explain."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from geotextloc.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_geoloc import make_geoloc  # noqa: E402
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)
SMOKE = Path(__file__).parents[1] / "geotextloc" / "configs" / "smoke" / "geobridge.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GeoLoc manifest and a CVG-Text release under one root, and a GeoBridge run of the smoke profile."""
    root = tmp_path_factory.mktemp("both")
    make_geoloc(root, n_train=16, n_test=6, region="Geo", size=32)
    _, test = make_release(root, n_train=4, n_test=6, version="Synth", size=32)
    out = root / "run"
    assert main(["train", "--config", str(SMOKE), f"data_root={root}", f"out_dir={out}",
                 f"feature_cache={root / 'features'}"]) == 0
    return root, out / "best.pt", test


def test_evaluate_runs_every_direction_without_a_city(trained, capsys):
    root, best, _ = trained
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(root), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "every direction" in printed and "P2S" in printed and "T2D" in printed
    saved = json.loads((best.parent / "eval" / "directions.json").read_text())
    assert set(saved["whole"]) >= {"D2S", "S2D", "P2S", "S2P", "D2P", "P2D", "T2D", "T2P", "T2S"}
    assert all(row["Count"] == 6 for row in saved["whole"].values())


def test_evaluate_text_to_satellite_on_a_release_city(trained, capsys):
    root, best, test = trained
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(root), "--city", "Synth",
                 "--version", "Synth", "--view", "sat", "--device", "cpu", "--scope", "6"]) == 0
    saved = json.loads((best.parent / "eval" / "Synth-sat.json").read_text())
    assert saved["overall"]["Count"] == len(test)


def test_osm_is_refused_in_one_line(trained, capsys):
    root, best, _ = trained
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(root), "--city", "Synth",
                 "--version", "Synth", "--view", "osm", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GeoBridge" in err[0] and "--view sat" in err[0]


def test_index_then_search_with_the_shared_text_tower(trained, tmp_path, capsys):
    root, best, test = trained
    assert main(["index", "--checkpoint", str(best), "--data", str(root), "--version", "Synth", "--view", "sat",
                 "--split", "test", "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--k", "3", test[0].text]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(rows) == 3 and all(row.split()[-1] in {r.name for r in test} for row in rows)
    import geotextloc  # the first hit is the tile the satellite encoder puts nearest the text

    model = geotextloc.load(best, view="sat")
    query = geotextloc.embed(model, texts=[test[0].text])
    tiles = geotextloc.embed(model, images=[r.images["satellite"] for r in test])
    assert rows[0].split()[-1] == test[int((query @ tiles.T).argmax())].name


def test_explain_a_record_with_the_satellite_encoder(trained, tmp_path):
    root, best, test = trained
    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(best), "--data", str(root), "--version", "Synth",
                 "--view", "satellite", "--record", test[0].name, "--scope", "6", "--explainer", "offline",
                 "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert any(out.rglob("*.json")) and any(out.rglob("*.png"))


def test_experiments_runs_a_geobridge_grid_and_skips_finished_runs(trained, capsys):
    """``geotextloc experiments --task geobridge``: modes x seeds trained and evaluated in every
    direction, the table written; a second call trains nothing and gives the same table."""
    root, _, _ = trained
    runs = root / "grid"
    argv = ["experiments", "--task", "geobridge", "--profile", "smoke", "--data-dir", str(root),
            "--runs-dir", str(runs), "--modes", "image-only,fused", "--seeds", "0",
            f"feature_cache={root / 'features'}"]
    assert main(argv) == 0
    table = (runs / "geobridge_results.csv").read_text()
    first = capsys.readouterr().out
    assert "geoloc/image-only/seed0: running" in first and "geoloc/fused/seed0: running" in first
    for mode in ("image-only", "fused"):
        done = json.loads((runs / "geoloc" / mode / "seed0" / "done.json").read_text())
        assert done["task"] == "geobridge" and done["mode"] == mode and done["config"]["mode"] == mode
        assert set(done["eval"]["whole"]) >= {"D2S", "S2D", "P2S", "S2P", "D2P", "P2D", "T2D", "T2P", "T2S"}
        assert (runs / "geoloc" / mode / "seed0" / "eval" / "directions-queries.csv").is_file()
    import pandas as pd
    rows = pd.read_csv(runs / "geobridge_results.csv")
    assert len(rows) == 2 * 9 and set(rows["mode"]) == {"image-only", "fused"}
    fused_p2s = rows[(rows["mode"] == "fused") & (rows.direction == "P2S")]["R@1"].item()
    done = json.loads((runs / "geoloc" / "fused" / "seed0" / "done.json").read_text())
    assert fused_p2s == pytest.approx(done["eval"]["whole"]["P2S"]["R@1"])

    mtime = (runs / "geoloc" / "fused" / "seed0" / "best.pt").stat().st_mtime_ns
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "geoloc/fused/seed0: done" in again and "running" not in again
    assert (runs / "geoloc" / "fused" / "seed0" / "best.pt").stat().st_mtime_ns == mtime
    assert (runs / "geobridge_results.csv").read_text() == table


def test_experiments_refuses_an_unknown_geobridge_mode_in_one_line(trained, capsys):
    root, _, _ = trained
    assert main(["experiments", "--task", "geobridge", "--profile", "smoke", "--data-dir", str(root),
                 "--runs-dir", str(root / "grid-bad"), "--modes", "fusion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fusion'" in err[0] and "image-only" in err[0]
    assert not (root / "grid-bad").exists()
