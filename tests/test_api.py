"""The top-level API on a real (tiny) checkpoint and a real saved index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import geotextloc
from geotextloc.cli import main
from geotextloc.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    train, test = make_release(root, n_train=16, n_test=6, size=32)
    out = root / "run"
    assert main(["train", "--config", "configs/smoke/crosstext2loc.yaml", f"data_root={root}", "versions=[Synth]",
                 f"out_dir={out}", "epochs=1", "batch_size=8", "val_share=0", "eval_scope=6"]) == 0
    return root, out / "best.pt", test


def test_import_is_light_and_names_the_api():
    assert set(geotextloc.__all__) == {"load", "embed", "evaluate", "search", "Model"}
    fresh = subprocess.run([sys.executable, "-c", "import sys, geotextloc; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "False"  # the API loads torch on first use only
    with pytest.raises(AttributeError):
        geotextloc.nothing_here  # noqa: B018


def test_load_embed_evaluate_search(run, tmp_path):
    root, best, test = run
    model = geotextloc.load(best)
    assert model.task == "crosstext2loc" and model.view == "sat"
    texts = geotextloc.embed(model, texts=[r.text for r in test])
    tiles = geotextloc.embed(model, images=[r.images["satellite"] for r in test])
    assert texts.shape == tiles.shape and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-4)
    report = geotextloc.evaluate(model, test, scope=6)
    by_hand = (texts @ tiles.T).argmax(1) == np.arange(len(test))  # names are unique: R@1 by hand
    assert report.to_dict()["overall"]["R@1"] == pytest.approx(100 * by_hand.mean())
    with pytest.raises(ConfigError):
        geotextloc.embed(model)
    assert main(["index", "--checkpoint", str(best), "--data", str(root), "--version", "Synth", "--view", "sat",
                 "--split", "test", "--out", str(tmp_path / "idx")]) == 0
    hits = geotextloc.search(tmp_path / "idx", test[0].text, k=3)
    best_tile = [r.name for r in test][int(np.argmax(texts[0] @ tiles.T))]
    assert hits.names[0][0] == best_tile


def test_best_checkpoint_prefers_the_interpolate_run_of_this_view_and_data(run, tmp_path):
    import shutil

    from geotextloc.models.checkpoints import read_checkpoint, save_checkpoint
    from geotextloc.train.runs import best_checkpoint, checkpoint_config

    root, best, _ = run
    obj = read_checkpoint(best)
    runs = tmp_path / "runs"
    for name, changes in {"trunc": {"epe": "truncate"}, "interp": {"epe": "interpolate"},
                          "other-view": {"epe": "interpolate", "view": "osm"},
                          "erm_quick": {"epe": "interpolate"},
                          "street-queries": {"epe": "interpolate", "query": "street"}}.items():  # newest: not text
        (runs / name).mkdir(parents=True)
        save_checkpoint({**obj, "config": {**obj["config"], **changes}}, runs / name / "best.pt")
    assert checkpoint_config(runs / "interp" / "best.pt")["epe"] == "interpolate"
    assert best_checkpoint(runs, "sat", root) == runs / "interp" / "best.pt"
    assert best_checkpoint(runs, "osm", root) == runs / "other-view" / "best.pt"
    assert best_checkpoint(runs, "sat", tmp_path / "elsewhere") is None  # trained on other data
    shutil.rmtree(runs / "interp")
    assert best_checkpoint(runs, "sat", root) == runs / "trunc" / "best.pt"
