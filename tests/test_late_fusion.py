"""Late fusion, s = w · s_text + (1 − w) · s_image: the protocol on fused scores, and the weight
chosen on the validation split without the test split ever being read."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geotextloc.errors import ConfigError
from geotextloc.eval import evaluate_embeddings
from geotextloc.eval.fusion import LateEmbeddings, choose_weight
from geotextloc.train.config import from_dict

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embeddings(seed: int, n: int = 12, text_noise: float = 0.5, street_noise: float = 0.5) -> LateEmbeddings:
    """n places 5 m apart in a row: tiles g, h; queries = their own tile plus noise."""
    rng = np.random.default_rng(seed)
    names = [f"60.{17000 + 5 * i:05d},24.94000_p{i}.png" for i in range(n)]
    g, h = unit(rng.standard_normal((n, 16))), unit(rng.standard_normal((n, 16)))
    t = unit(g + text_noise * rng.standard_normal((n, 16)))
    p = unit(h + street_noise * rng.standard_normal((n, 16)))
    return LateEmbeddings(t, g, p, h, names, names)


def test_fused_scores_are_the_weighted_sum_and_the_ends_are_each_model_alone():
    late = embeddings(0)
    for w in (0.0, 0.3, 1.0):
        q, g = late.fused(w)
        np.testing.assert_allclose(q @ g.T, w * late.text @ late.text_tiles.T + (1 - w) * late.street @ late.street_tiles.T,
                                   atol=1e-6)
    text_only = evaluate_embeddings(late.text, late.text_tiles, late.queries, late.gallery, scope=5)
    assert late.report(1.0, scope=5).table["rank"].tolist() == text_only.table["rank"].tolist()
    street_only = evaluate_embeddings(late.street, late.street_tiles, late.queries, late.gallery, scope=5)
    assert late.report(0.0, scope=5).table["rank"].tolist() == street_only.table["rank"].tolist()
    with pytest.raises(ConfigError, match="from 0 to 1"):
        late.fused(1.5)


def test_the_weight_is_the_best_validation_r1_ties_nearest_one_half():
    w, table = choose_weight(embeddings(1, text_noise=0.0, street_noise=5.0), scope=None)  # perfect text
    assert list(table["w"]) == [round(0.05 * i, 2) for i in range(21)]
    assert table["R@1"].iloc[-1] == 100.0 and table.loc[table["w"] == w, "R@1"].item() == 100.0
    assert choose_weight(embeddings(2, text_noise=5.0, street_noise=0.0), scope=None, weights=(0.0, 1.0))[0] == 0.0
    w, table = choose_weight(embeddings(3, text_noise=0.0, street_noise=0.0), scope=None, weights=(0.0, 0.4, 1.0))
    assert w == 0.4 and set(table["R@1"]) == {100.0}  # all perfect: the one nearest 1/2


def test_late_fusion_of_two_runs_never_reads_the_test_split_before_w_is_chosen(tmp_path, monkeypatch, capsys):
    from geotextloc.data import images, release
    from geotextloc.train import late_fusion as late
    from geotextloc.train.loop import train

    make_release(tmp_path / "release", n_train=24, n_test=8, spacing=0.0015)
    common = dict(model="geotextloc-tiny", pretrained=None, context_length=96, image_size=32, data_root=str(
        tmp_path / "release"), versions=["Synth"], view="osm", val_share=0.25, batch_size=8, epochs=1, lr=1e-3,
        device="cpu", eval_scope=8)
    for query in ("text", "street"):
        train(from_dict(dict(common, query=query, out_dir=str(tmp_path / query))))

    events = []
    read_release, load_image, choose = release.read_release, images.load_image, late.choose_weight
    monkeypatch.setattr(release, "read_release", lambda *a, **k: events.append(("read", k["splits"])) or
                        read_release(*a, **k))
    monkeypatch.setattr(images, "load_image", lambda path: events.append(("image", Path(path).name)) or load_image(path))
    monkeypatch.setattr(late, "choose_weight", lambda *a, **k: (events.append(("chosen",)), choose(*a, **k))[1])

    result = late.late_fusion(tmp_path / "text" / "best.pt", tmp_path / "street" / "best.pt")
    chosen = events.index(("chosen",))
    before, after = events[:chosen], events[chosen + 1:]
    assert ("read", ("train",)) in before and not any(e[0] == "read" and "test" in e[1] for e in before)
    seen = [e[1] for e in before if e[0] == "image"]
    assert seen and all("_train" in name for name in seen)  # validation places only: carved from training
    assert ("read", ("test",)) in after and any("_test" in e[1] for e in after if e[0] == "image")

    assert 0.0 <= result["weight"] <= 1.0 and len(result["validation"]) == 21
    assert result["validation"].loc[result["validation"]["w"] == result["weight"], "R@1"].item() == \
        result["validation"]["R@1"].max()
    assert set(result["test"]) == {"late", "text", "street"}
    for runs in result["test"].values():
        assert runs["Synth/overall"]["Count"] == 8

    with pytest.raises(ConfigError, match="query=street here"):
        late.late_fusion(tmp_path / "text" / "best.pt", tmp_path / "text" / "best.pt")
    from geotextloc.models.checkpoints import read_checkpoint, save_checkpoint

    saved = read_checkpoint(tmp_path / "text" / "best.pt")  # a text run selected on other places
    save_checkpoint({**saved, "config": {**saved["config"], "train_limit": 12}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="different validation places"):
        late.late_fusion(tmp_path / "other.pt", tmp_path / "street" / "best.pt")

    kept = late.late_fusion_run(tmp_path / "text", tmp_path / "street", tmp_path / "late", weights=(0.0, 0.5, 1.0))
    assert kept["weight"] in (0.0, 0.5, 1.0) and [row["w"] for row in kept["validation"]] == [0.0, 0.5, 1.0]
    per_query = pd.read_csv(tmp_path / "late" / "eval" / "Synth-osm-queries.csv")
    assert len(per_query) == 8  # the fused queries' ranks, for the paired tests
    hits = 100 * (per_query["rank"] == 1).mean()
    assert hits == pytest.approx(kept["test"]["late"]["Synth/overall"]["R@1"])
    events.clear()
    assert late.late_fusion_run(tmp_path / "text", tmp_path / "street", tmp_path / "late", weights=(0.0, 0.5, 1.0)) == kept
    assert not events  # read back: no image decoded, no release read
    from geotextloc.cli import main

    argv = ["late-fusion", "--text", str(tmp_path / "text"), "--street", str(tmp_path / "street"), "--out",
            str(tmp_path / "late")]
    assert main(argv) == 0  # all 21 weights: another setting, computed again
    printed = capsys.readouterr().out
    assert f"w = {result['weight']:g} " in printed and "Synth/overall" in printed and events
    events.clear()
    assert main(argv) == 0 and capsys.readouterr().out == printed and not events  # now read back
    torch.save({"other": torch.zeros(1)}, tmp_path / "street" / "best.pt")  # the street run changed
    with pytest.raises(ConfigError, match="not a geotextloc training checkpoint"):  # recomputed, not read back
        late.late_fusion_run(tmp_path / "text", tmp_path / "street", tmp_path / "late", weights=(0.0, 0.5, 1.0))


def test_late_fusion_command_refuses_a_run_without_weights_in_one_line(tmp_path, capsys):
    from geotextloc.cli import main

    runs = {q: tmp_path / q / "seed0" for q in ("text", "street")}
    for query, run in runs.items():
        run.mkdir(parents=True)
    assert main(["late-fusion", "--text", str(runs["text"]), "--street", str(runs["street"])]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "late-text").exists()  # nothing written
