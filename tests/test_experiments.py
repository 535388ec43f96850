"""Experiment grids: two-stage plans, stage configs, text sources, galleries, skip and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from geotextloc.cli import main
from geotextloc.data.release import Record
from geotextloc.errors import ConfigError, DataError
from geotextloc.eval import cities, compare
from geotextloc.train import grid as ex

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release

torch.set_num_threads(1)
CONFIGS = Path(__file__).parents[1] / "configs"
TEST_SETTINGS = {"versions": ["Synth"], "image_size": 32, "batch_size": 8, "epochs": 1, "train_limit": None,
                 "test_limit": None, "eval_scope": 12, "eval_batch_size": 16}


@pytest.fixture()
def configs(tmp_path, monkeypatch):
    """A configs/ folder whose scratch profile (two stages, random-init tiny model) trains on the
    synthetic release in seconds, and whose smoke profile (one stage, pretrained towers) is the real one."""
    folder = tmp_path / "configs" / "scratch"
    folder.mkdir(parents=True)
    for name in ("crosstext2loc", "crosstext2loc_pretrain"):
        values = yaml.safe_load((CONFIGS / "scratch" / f"{name}.yaml").read_text()) | TEST_SETTINGS
        values["context_length"] = 77 if name.endswith("pretrain") else 96
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "configs" / "smoke").mkdir()
    (tmp_path / "configs" / "smoke" / "crosstext2loc.yaml").write_text((CONFIGS / "smoke" / "crosstext2loc.yaml").read_text())
    monkeypatch.setenv("GEOTEXTLOC_CONFIGS", str(tmp_path / "configs"))
    return folder


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    train, test = make_release(root, n_train=24, n_test=12)
    for split, records in (("train", train), ("test", test)):
        direct = {r.name: f"A street with some buildings, number {i}." for i, r in enumerate(records)}
        (root / "direct" / "Synth").mkdir(parents=True, exist_ok=True)
        (root / "direct" / "Synth" / f"{split}.json").write_text(json.dumps(direct))
    return root


def test_plan_runs_stage_one_first_and_shares_it_across_seeds(configs):
    specs = ex.plan("scratch", ["osm"], ["truncate", "interpolate"], [0, 1], pretrain_seed=0)
    assert [s.key for s in specs] == ["osm/pretrain/seed0", "osm/truncate-full/seed0", "osm/interpolate-full/seed0",
                                      "osm/truncate-full/seed1", "osm/interpolate-full/seed1"]
    per_seed = ex.plan("scratch", ["osm"], ["interpolate"], [0, 1])
    assert [s.key for s in per_seed if s.stage == ex.PRETRAIN] == ["osm/pretrain/seed0", "osm/pretrain/seed1"]
    scratch = ex.plan("scratch", ["sat"], ["interpolate"], [2], stage=ex.SCRATCH, cities=["Helsinki"])
    assert [s.key for s in scratch] == ["Helsinki-sat/interpolate-full-scratch/seed2"]
    with pytest.raises(ConfigError, match="text source 'gpt'"):
        ex.plan("scratch", ["osm"], ["interpolate"], [0], ["gpt"])


def test_a_profile_without_stage_one_plans_one_stage_runs_from_its_pretrained_weights(configs, tmp_path):
    assert not ex.has_pretrain_stage("smoke") and ex.has_pretrain_stage("scratch")
    specs = ex.plan("smoke", ["osm"], ["truncate", "native"], [0, 1], pretrain_seed=None)
    assert [s.key for s in specs] == ["osm/truncate-full/seed0", "osm/native-full/seed0",
                                      "osm/truncate-full/seed1", "osm/native-full/seed1"]
    cfg = ex.run_config(specs[1], "smoke", tmp_path / "runs", "data")
    assert (cfg.pretrained, cfg.epe, cfg.out_dir) == ("wheels", "native", str(tmp_path / "runs/osm/native-full/seed0"))


def test_stage_configs_chain_and_take_stage_overrides(configs, tmp_path):
    runs = tmp_path / "runs"
    first = configs / "crosstext2loc_pretrain.yaml"
    first.write_text(yaml.safe_dump(yaml.safe_load(first.read_text()) | {"text_pos_init": "sinusoidal"}))
    spec = ex.RunSpec("osm", seed=1, epe="kps", pretrain_seed=0)
    over = {"pretrain.epochs": 3, "lr": 1e-3}
    stage2 = ex.run_config(spec, "scratch", runs, "data", over)
    assert stage2.pretrained == str(runs / "osm/pretrain/seed0/last.pt")
    assert (stage2.epe, stage2.context_length, stage2.seed, stage2.epochs, stage2.lr) == ("kps", 96, 1, 1, 1e-3)
    assert stage2.out_dir == str(runs / "osm/kps-full/seed1") and stage2.data_root == "data"
    stage1 = ex.run_config(ex.pretrain_of(spec), "scratch", runs, "data", over)
    assert (stage1.epe, stage1.context_length, stage1.seed, stage1.epochs, stage1.pretrained) == ("truncate", 77, 0, 3, None)
    scratch = ex.run_config(ex.RunSpec("osm", 0, "interpolate", stage=ex.SCRATCH), "scratch", runs)
    assert (scratch.pretrained, scratch.epochs, scratch.context_length) == (None, 2, 96)
    # random-init runs share stage 1's positional init; stage 2 loads stage 1's table instead
    assert (stage1.text_pos_init, scratch.text_pos_init, stage2.text_pos_init) == ("sinusoidal", "sinusoidal", "normal")
    with pytest.raises(ConfigError, match="prefix a stage-only key"):
        ex.run_config(spec, "scratch", runs, overrides={"stage1.epochs": 2})


def test_city_runs_keep_their_citys_dense_versions_in_stage_one_only(configs, tmp_path):
    first = configs / "crosstext2loc_pretrain.yaml"
    values = yaml.safe_load(first.read_text()) | {"versions": ["A-mixed", "B-mixed", "A-dense", "B-dense"]}
    first.write_text(yaml.safe_dump(values))
    spec = ex.RunSpec("osm", 0, "interpolate", city="A")
    assert ex.run_config(ex.pretrain_of(spec), "scratch", tmp_path).versions == ["A-mixed", "A-dense"]
    assert ex.run_config(spec, "scratch", tmp_path).versions == ["A-mixed"]


def _record(name, city="C", view="panorama"):
    lat, lon = (float(x) for x in name.split("_")[0].split(","))
    return Record(name, city, city, "test", view, lat, lon, "text")


def test_galleries_separate_query_groups_only_where_tiles_repeat():
    distinct = [_record("60.1,24.9_2024-06_a_d1_z3.jpg"), _record("60.2,24.9_b.jpg", view="single")]
    assert [(c, g, len(r)) for c, g, r in cities.galleries(distinct)] == [("C", None, 2)]
    shared = [_record("60.1,24.9_2024-06_a_d1_z3.jpg"), _record("60.1,24.9_as.jpg", view="single"),
              _record("61.0,25.0_2024-06_c_d1_z3.jpg", city="D")]
    assert [(c, g, len(r)) for c, g, r in cities.galleries(shared)] == [
        ("C", "panorama", 1), ("C", "single_view", 1), ("D", None, 1)]


def test_direct_text_source_replaces_every_description(release, tmp_path):
    records = [_record("60.1,24.9_2024-06_a_d1_z3.jpg")]
    assert ex.with_text_source(records, release, "full") == records
    with pytest.raises(DataError, match="no direct text for record .* of C .*rebuild the dataset"):
        ex.with_text_source(records, release, "direct")
    dense = [replace(records[0], version="C-dense")]  # densified before dense places had direct texts
    with pytest.raises(DataError, match="of C-dense .*geotextloc data densify --out"):
        ex.with_text_source(dense, release, "direct")
    with pytest.raises(DataError, match="no direct-generation texts"):
        ex.with_text_source(records, tmp_path, "direct")


@pytest.mark.slow
def test_grid_trains_evaluates_skips_finished_runs_and_resumes_stopped_ones(configs, release, tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["experiments", "--profile", "scratch", "--data-dir", str(release), "--runs-dir", str(runs),
            "--views", "osm", "--variants", "truncate,interpolate", "--seeds", "0", "--threads", "1"]
    assert main(argv) == 0
    table = ex.collect(runs)
    assert set(table.run) == {"osm/pretrain/seed0", "osm/truncate-full/seed0", "osm/interpolate-full/seed0"}
    assert set(table.group) == {"overall", "panorama", "single_view"} and set(table.city) == {"Synth"}
    assert (table[table.group == "overall"].Count == 12).all()
    done = json.loads((runs / "osm/interpolate-full/seed0/done.json").read_text())
    assert done["config"]["pretrained"] == str(runs / "osm/pretrain/seed0/last.pt")
    assert done["config"]["context_length"] == 96 and done["train_seconds"] > 0
    assert (runs / "results.csv").read_text().count("\n") == len(table) + 1

    stamp = (runs / "osm/interpolate-full/seed0/last.pt").stat().st_mtime_ns
    assert main(argv) == 0  # everything finished: nothing is retrained
    assert (runs / "osm/interpolate-full/seed0/last.pt").stat().st_mtime_ns == stamp
    assert "osm/interpolate-full/seed0: done" in capsys.readouterr().out

    spec = ex.RunSpec("osm", 0, "interpolate", "direct")
    first = ex.run_one(spec, "scratch", runs, release, {"finetune.epochs": 2, "finetune.stop_after_epoch": 1})
    assert first["summary"]["epoch"] == 1 and not (runs / spec.key / "done.json").exists()
    second = ex.run_one(spec, "scratch", runs, release, {"finetune.epochs": 2})  # resumes epoch 2
    assert second["summary"]["epoch"] == 2 and (runs / spec.key / "done.json").exists()
    epochs = [json.loads(line)["epoch"] for line in (runs / spec.key / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "eval"]
    assert epochs == [0, 1]
    queries = (runs / spec.key / "eval" / "Synth-osm-queries.csv").read_text()
    assert "A street with some buildings" in queries and "building, and on the right" not in queries


@pytest.mark.slow
def test_a_run_stopped_early_by_patience_is_finished_and_evaluated(configs, release, tmp_path):
    runs = tmp_path / "runs"
    spec = ex.RunSpec("osm", 0, "truncate", stage=ex.SCRATCH)
    stall = {"epochs": 4, "lr": 1e-12, "patience": 1}  # lr ~0: the validation score cannot improve
    record = ex.run_one(spec, "scratch", runs, release, stall)
    assert record["summary"]["epoch"] == 2 and ex.stopped_early(runs / spec.key)
    assert (runs / spec.key / "done.json").exists() and set(record["eval"]["results"]) >= {"Synth/overall"}
    assert set(ex.collect(runs).run) == {spec.key}


def test_a_run_is_trained_by_one_process_at_a_time(tmp_path):
    with ex.run_lock(tmp_path / "run"), pytest.raises(ex.RunBusy, match="being trained by process"), \
            ex.run_lock(tmp_path / "run"):
        pass
    assert not (tmp_path / "run" / ".lock").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (tmp_path / "run" / ".lock").write_text(gone.stdout.strip())  # its process has exited: stale
    with ex.run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())


def test_mean_std_pools_cities_by_query_count():
    rows = [{"run": "r", "stage": "finetune", "trained_on": "all", "view": "osm", "epe": "interpolate",
             "text_source": "full", "seed": seed, "city": city, "group": "overall", "R@1": r1, "R@5": 0.0,
             "R@10": 0.0, "L@50": 0.0, "L@100": 0.0, "L@150": 0.0, "Deviation": 0.1, "Count": n,
             "train_seconds": 1.0}
            for seed, (a, b) in enumerate([(10.0, 40.0), (20.0, 50.0)]) for city, r1, n in (("A", a, 100), ("B", b, 300))]
    table = compare.with_all_cities(pd.DataFrame(rows).assign(run=lambda t: t.run + t.seed.astype(str)))
    pooled = table[table.city == "all"].sort_values("seed")
    assert pooled["R@1"].tolist() == [32.5, 42.5] and pooled.Count.tolist() == [400, 400]
    formatted = compare.format_mean_std(compare.mean_std(pooled, ["epe"], ("R@1",)))
    assert formatted.loc["interpolate", "R@1"] == "37.5 ± 7.1"
