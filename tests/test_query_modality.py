"""CrossText2Loc's other query modalities: a street view alone (Sample4Geo-style image -> tile)
and a street view fused with its description, trained by ``geotextloc train`` and evaluated by
the CVG-Text protocol (the pretrained towers on cached features, as the tiny profile trains)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from geotextloc.cli import main
from geotextloc.errors import ConfigError, DataError
from geotextloc.train import grid
from geotextloc.train.config import from_dict

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)



TOWERS_VALUES = dict(model="geotextloc-minilm-mnv2", pretrained="wheels", context_length=128, image_size=64,
                     train_last_k=2, cache_features=True, augment=False, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    make_release(root, n_train=24, n_test=8, spacing=0.0015)
    return root


CONFIGS = Path(__file__).parents[1] / "geotextloc" / "configs"


def train_smoke(root: Path, query: str, out: Path, *overrides: str) -> Path:
    """``geotextloc train`` of the smoke profile of ``query`` on the synthetic release."""
    assert main(["train", "--config", str(CONFIGS / "smoke" / f"crosstext2loc_{query}.yaml"), f"data_root={root}",
                 "versions=[Synth]", "view=osm", "val_share=0.25", "eval_scope=8", f"out_dir={out}", *overrides]) == 0
    return out


def test_street_and_fusion_queries_train_through_the_cli_and_evaluate_through_the_protocol(release, tmp_path, capsys):
    from geotextloc.train.config import load_config
    from geotextloc.train.loop import seed_everything
    from geotextloc.train.tasks import task_of

    for query in ("street", "fusion"):
        run = train_smoke(release, query, tmp_path / query, f"feature_cache={tmp_path / 'features'}")
        cfg = load_config(run / "config.yaml")
        assert (cfg.query, cfg.cache_features, cfg.image_size) == (query, True, 64)
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "eval"]
        assert evals and evals[0]["split"] == "val" and 0 <= evals[0]["score"] <= 100
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(release), "--city", "Synth",
                     "--view", "osm", "--scope", "8"]) == 0
        assert f"Synth {query} -> osm (scope 8, 8 queries)" in capsys.readouterr().out
        summary = json.loads((run / "eval" / "Synth-osm.json").read_text())
        assert summary["overall"]["Count"] == 8 and 0 <= summary["overall"]["R@1"] <= 100
        table = pd.read_csv(run / "eval" / "Synth-osm-queries.csv")  # queries keyed by the records' names
        test_names = sorted(json.loads((release / "CVG-text" / "Synth" / "test.json").read_text()))
        assert sorted(table["query"]) == test_names and set(table["top1"]) <= set(test_names)

        after = torch.load(run / "last.pt", weights_only=True)["model"]
        seed_everything(cfg.seed)  # the run's initial model
        before = task_of(cfg).build(cfg)[0].state_dict()
        assert torch.equal(before["street.trunk.blocks.6.0.conv_pw.weight"],
                           before["clip.visual.trunk.blocks.6.0.conv_pw.weight"])  # E_p starts as a copy of E_g
        changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
        assert any(k.startswith("street.trunk.blocks.6.") for k in changed)  # the street tower trains its tail,
        assert not any(k.startswith(("street.trunk.blocks.4.", "street.trunk.conv_stem")) for k in changed)
        assert {"street.head.proj.weight", "clip.visual.head.proj.weight", "clip.logit_scale"} <= changed  # + tiles
        assert not any(k.startswith("clip.text.transformer.") for k in changed)
        assert ("clip.text.proj.weight" in changed) == (query == "fusion")  # the text projection: fusion only
        assert ({"fuse.mlp.0.weight", "fuse.mlp.2.weight"} <= changed) == (query == "fusion")  # trained jointly
    features = sorted(p.name.split("-")[0] + ("-street" if "-street-" in p.name else "")
                      for p in (tmp_path / "features").iterdir())
    assert features == ["image", "image-street", "text"]  # one cache per part, shared by both runs


def test_cached_street_features_give_the_models_own_embeddings(release):
    """The street tower's cached stem maps + trainable tail equal the whole street tower."""
    from geotextloc.data.images import image_paths, load_image
    from geotextloc.data.release import read_release
    from geotextloc.models import factory, query
    from geotextloc.train import cached

    model = query.over(factory.create("geotextloc-minilm-mnv2", "wheels", 128, image_size=64), "fusion")[0]
    records = read_release(release, versions=["Synth"]).records[:4]
    cached.lock_queries(model, 2)
    model.eval()
    start = cached.split_stage(model, 2)
    transform = query.street_transform(model.street)
    streets = torch.stack([transform(load_image(p)) for p in image_paths(records, "street")])
    assert streets.shape == (4, 3, 64, 128)  # panoramas and single views alike at 2:1
    with torch.no_grad():
        maps = cached.image_stem(model.street, streets, start).half()
        tiles = torch.zeros(4, 3, 64, 64)
        tile_maps = cached.image_stem(model.visual, tiles, start)
        pooled = torch.zeros(4, model.text.transformer.config.hidden_size)
        got = cached.CachedQueries(model, 2)(tile_maps, (maps, pooled))[3]["street"]
        want = model.encode_street(streets, normalize=True)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_street_towers_take_2_to_1_views_vit_by_a_bicubic_table_convolutional_as_they_are():
    from geotextloc.models import factory, query
    from geotextloc.models.epe import resize_visual_grid

    vit = factory.create("geotextloc-tiny")[0]  # 64 px, patch 8: 8 x 8
    table = vit.visual.positional_embedding.detach().clone()
    model = query.over((vit, None, None, None), "street")[0]
    assert model.street.grid_size == (8, 16) and model.street.preprocess_cfg["size"] == (64, 128)
    reference = resize_visual_grid(copy.deepcopy(vit.visual), (8, 16)).positional_embedding
    torch.testing.assert_close(model.street.positional_embedding, reference)
    torch.testing.assert_close(model.visual.positional_embedding, table)  # the tile tower keeps its grid
    assert model.encode_street(torch.randn(2, 3, 64, 128)).shape == (2, 128)
    assert not any(p.requires_grad for n, p in model.clip.named_parameters() if n.startswith("transformer."))

    towers = factory.create("geotextloc-minilm-mnv2", None, image_size=64)[0]
    model = query.over((towers, None, None, None), "fusion", "sum")[0]
    assert model.street.preprocess_cfg["size"] == (64, 128) and model.visual.preprocess_cfg["size"] == (64, 64)
    for (name, a), b in zip(model.street.state_dict().items(), model.visual.state_dict().values()):
        assert torch.equal(a, b), name  # same pretrained weights at the start
    t, p = torch.nn.functional.normalize(torch.randn(2, 2, 256), dim=-1)
    torch.testing.assert_close(model.fuse(t, p), torch.nn.functional.normalize(t + p, dim=-1))


def test_street_queries_need_street_views_and_crosstext2loc(release, tmp_path):
    from geotextloc.train.loop import train

    copy_root = tmp_path / "release"
    shutil.copytree(release, copy_root)
    shutil.rmtree(copy_root / "Synth-street")
    cfg = from_dict(dict(TOWERS_VALUES, data_root=str(copy_root), versions=["Synth"], query="street",
                         out_dir=str(tmp_path / "run")))
    with pytest.raises(DataError, match="has no street view.*drop Synth from versions"):
        train(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="query='street' applies to task=crosstext2loc"):
        from_dict({"task": "geobridge", "query": "street"})
    with pytest.raises(ConfigError, match="fusion=.*choose one of sum, mlp"):
        from_dict({"query": "fusion", "fusion": "attention"})
    with pytest.raises(ConfigError, match="trains with the InfoNCE loss"):
        from_dict({"query": "street", "loss": "siglip"})


def test_the_grid_plans_and_runs_street_and_fusion_queries_beside_text(release, tmp_path, capsys):
    specs = grid.plan("smoke", ["osm"], ["truncate", "interpolate"], [0], queries=["street", "fusion"])
    assert [s.key for s in specs] == ["osm/street/seed0", "osm/fusion-truncate-full/seed0",
                                      "osm/fusion-interpolate-full/seed0"]  # one street run: it has no text
    cfg = grid.run_config(specs[1], "smoke", tmp_path / "runs", release)
    assert (cfg.query, cfg.epe, cfg.out_dir) == ("fusion", "truncate", str(tmp_path / "runs/osm/fusion-truncate-full/seed0"))
    rows = grid.plan("smoke", ["osm"], ["interpolate"], [0], queries=[], baselines=["clip", "vilt"])
    assert [s.key for s in rows] == ["osm/clip-interpolate-full/seed0", "osm/vilt-interpolate-full/seed0"]
    assert grid.run_config(rows[1], "smoke", tmp_path / "runs", release).model == "geotextloc-vilt-tiny"
    with pytest.raises(ConfigError, match="baseline 'gpt'"):
        grid.plan("smoke", ["osm"], ["interpolate"], [0], baselines=["gpt"])
    with pytest.raises(ConfigError, match="query 'drone'"):
        grid.plan("smoke", ["osm"], ["interpolate"], [0], queries=["drone"])
    with pytest.raises(ConfigError, match="one stage"):
        grid.plan("scratch", ["osm"], ["interpolate"], [0], queries=["street"])

    runs = tmp_path / "runs"
    argv = ["experiments", "--profile", "smoke", "--data-dir", str(release), "--runs-dir", str(runs), "--views", "osm",
            "--queries", "text,street", "--seeds", "0", "--threads", "1", "versions=[Synth]", "val_share=0.25",
            "eval_scope=8", "epochs=1", "image_size=64", f"feature_cache={tmp_path / 'features'}"]
    assert main(argv) == 0
    table = pd.read_csv(runs / "results.csv")
    assert set(zip(table.run, table["query"])) == {("osm/interpolate-full/seed0", "text"), ("osm/street/seed0", "street")}
    street = json.loads((runs / "osm/street/seed0/done.json").read_text())
    assert street["config"]["query"] == "street" and street["eval"]["results"]["Synth/overall"]["Count"] == 8
    assert f"wrote {runs / 'results.csv'}" in capsys.readouterr().out
