"""The papers' baselines, SigLIP, BLIP (+ ITM re-ranking) and ViLT: created by name, trained by the
one loop with their own losses, reloaded from their checkpoints and evaluated with the protocol."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geotextloc.errors import ConfigError, DataError, OfflineError
from geotextloc.data.images import load_image
from geotextloc.eval import evaluate, evaluate_embeddings, evaluate_ranking
from geotextloc.eval.embed import embed_images, embed_texts, evaluate_model
from geotextloc.eval.pairs import evaluate_pairs
from geotextloc.models import factory
from geotextloc.models.epe import extend_positional_embedding, positional_table
from geotextloc.train import commands
from geotextloc.train.config import from_dict, load_config
from geotextloc.train.loop import build_model, seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)
CONFIGS = Path(__file__).parents[1] / "configs"
BASELINES = ("siglip", "blip", "vilt")
FIRST_LOSS = {  # B = 8 pairs of a random-init model, each trained with its own loss
    "siglip": 10.0,  # sigmoid loss: 8 positives at logit t*cos + b ~ -10, 56 negatives ~ 0
    "blip": math.log(8) + math.log(2),  # InfoNCE over 8 + ITM cross-entropy over 2 classes
    "vilt": math.log(8),  # a text's tile among 1 + 7 tiles
}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    train_records, test_records = make_release(root, n_train=24, n_test=12)
    return root, train_records, test_records


def cli():
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    return parser


def smoke_overrides(root, out) -> list[str]:
    return [f"data_root={root}", "versions=[Synth]", f"out_dir={out}", "image_size=32", "val_share=0"]


@pytest.fixture(scope="module")
def runs(release, tmp_path_factory):
    """One `geotextloc train` of each baseline's smoke profile on the synthetic release."""
    root, _, _ = release
    out = tmp_path_factory.mktemp("runs")
    for name in BASELINES:
        args = cli().parse_args(["train", "--config", str(CONFIGS / "smoke" / f"crosstext2loc_{name}.yaml"),
                                 *smoke_overrides(root, out / name)])
        assert args.func(args) == 0
    return out


def rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_with_its_own_loss_and_reloads_from_its_checkpoint(runs, release, name):
    root, _, _ = release
    run = runs / name
    first = rows(run, "train")[0]
    assert first["loss"] == pytest.approx(FIRST_LOSS[name], abs=0.5 if name == "siglip" else 0.1)
    assert ("logit_scale" in first) == (name != "vilt")  # ViLT scores pairs: no temperature
    evaluation = rows(run, "eval")[-1]
    assert evaluation["overall"]["Count"] == 12 and 0 <= evaluation["overall"]["R@1"] <= 100

    cfg = load_config(CONFIGS / "smoke" / f"crosstext2loc_{name}.yaml", smoke_overrides(root, run))
    seed_everything(cfg.seed)  # the loop's initial model
    initial = build_model(cfg)[0].state_dict()
    model, _, _, tokenizer, config = factory.from_checkpoint(str(run / "best.pt"))
    saved = torch.load(run / "best.pt", weights_only=True)["model"]
    assert type(model).__name__ == {"siglip": "CustomTextCLIP", "blip": "BlipRetrieval", "vilt": "ViltRetrieval"}[name]
    assert config["model"] == f"geotextloc-{name}-tiny" and tokenizer(["x"]).shape == (1, 128)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # what only the model's own loss trains has moved: SigLIP's bias, BLIP's ITM head, ViLT's score head
    moved = {"siglip": "logit_bias", "blip": "itm_head.weight", "vilt": "rank_output.weight"}[name]
    assert not torch.equal(saved[moved], initial[moved])


@pytest.mark.parametrize("name", BASELINES)
def test_geotextloc_evaluate_reports_a_trained_baseline_as_training_did(runs, release, tmp_path, capsys, name):
    root, _, _ = release
    run = runs / name
    args = cli().parse_args(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(root),
                             "--city", "Synth", "--out", str(tmp_path), "--batch-size", "32"])
    assert args.func(args) == 0
    assert "R@1" in capsys.readouterr().out
    report = json.loads((tmp_path / "Synth-sat.json").read_text())  # the run's view (the default, sat)
    best = max(rows(run, "eval"), key=lambda r: r["score"])
    assert report["overall"] == best["overall"]  # the loop's evaluation (its eval_batch_size: 32)


def names_at(points) -> list[str]:
    return [f"{lat:.6f},{lon:.6f}_2022-08_pano_{i:03d}.png" for i, (lat, lon) in enumerate(points)]


@pytest.mark.parametrize("scope", [5, None])
def test_pair_scores_rank_the_scope_exactly_as_the_protocol_ranks_similarities(scope):
    rng = np.random.default_rng(0)
    points = [(60.17 + 0.0003 * (i % 5), 24.94 + 0.0003 * (i // 5)) for i in range(20)]
    names = names_at(points)
    q = rng.normal(size=(20, 8)).round(0)  # integer dot products: many exact ties
    g = rng.normal(size=(20, 8)).round(0)

    def dot(rows, cols):
        return (q[rows] * g[cols]).sum(axis=1)

    want = evaluate_embeddings(q, g, names, names, scope=scope).table
    pd.testing.assert_frame_equal(evaluate_pairs(dot, names, names, scope=scope).table, want)
    pd.testing.assert_frame_equal(evaluate(q @ g.T, names, names, scope=scope).table, want)
    # two stages: k=0 is the first stage alone, k >= scope the second alone
    other = rng.normal(size=(20, 20))

    def second(rows, cols):
        return other[rows, cols]

    pd.testing.assert_frame_equal(evaluate_pairs(second, names, names, scope=scope, first_stage=dot, k=0).table, want)
    pd.testing.assert_frame_equal(evaluate_pairs(second, names, names, scope=scope, first_stage=dot, k=20).table,
                                  evaluate_pairs(second, names, names, scope=scope).table)


def test_reranking_reorders_the_first_k_by_the_second_stage_and_keeps_the_rest():
    points = [(60.17, 24.94), (60.17, 24.9402), (60.17, 24.9404), (60.17, 24.9406), (60.17, 24.9408)]
    names = names_at(points)  # query 0 is at tile 0; tiles 1..4 lie ever further away
    first = {0: 0.5, 1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6}  # first stage: 1, 2, 3, 4, 0
    second = {0: 0.9, 1: 0.1, 2: 0.3, 3: 0.3, 4: 1.0}  # among the first 3: 2 and 3 tie, 1 last

    def stage(table):
        return lambda rows, cols: np.array([table[c] if r == 0 else 0.0 for r, c in zip(rows, cols)])

    report = evaluate_pairs(stage(second), names[:1], names, scope=5, first_stage=stage(first), k=3)
    top = report.table.loc[0, ["top1", "top2", "top3", "top4", "top5"]].tolist()
    assert top == [names[2], names[3], names[1], names[4], names[0]]  # tie: the nearer first
    assert report.table.loc[0, "rank"] == 5
    with pytest.raises(ConfigError, match="needs a first_stage"):
        evaluate_pairs(stage(second), names[:1], names, k=3)

    def nearest_five_times(rows, candidates):
        return np.repeat(candidates[:, :1], candidates.shape[1], axis=1)

    with pytest.raises(DataError, match="not a reordering of their candidates"):
        evaluate_ranking(nearest_five_times, names[:1], names, scope=5)


def test_vilt_scores_every_patch_in_order_as_transformers_does():
    from transformers import ViltForImageAndTextRetrieval

    torch.manual_seed(0)
    model, _, _, tokenizer = factory.create("geotextloc-vilt-tiny", image_size=32)
    model.eval()
    tokens, images = tokenizer(["a red building on the left", "a green park"]), torch.randn(2, 3, 32, 32)
    reference = ViltForImageAndTextRetrieval(model.vilt.config)
    reference.vilt, reference.rank_output = model.vilt, model.rank_output
    with torch.no_grad():
        want = reference.eval()(input_ids=tokens, attention_mask=(tokens != 0).long(), pixel_values=images,
                                pixel_mask=torch.ones(2, 32, 32, dtype=torch.long)).logits[:, 0]
        torch.testing.assert_close(model.match(model.image_state(images), tokens), want)
        scores = model(images, tokens, negatives=15)  # each text: its tile, then the one other tile
        torch.testing.assert_close(scores[:, 0], want)
        torch.testing.assert_close(scores[:, 1], model.match(model.image_state(images.flip(0)), tokens))
    with pytest.raises(ConfigError, match="no tile embeddings to index"):
        embed_images(model, [], None)


def test_blip_ranks_by_itc_and_reranks_its_top_k_with_the_itm_head(release):
    _, _, test = release
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = factory.create("geotextloc-blip-tiny", context_length=96, image_size=32)
    model.eval()
    names, texts = [r.name for r in test], [r.text for r in test]
    tiles = [r.images["osm"] for r in test]
    model.rerank_k = 0  # ITC alone: the dual-encoder protocol
    pd.testing.assert_frame_equal(
        evaluate_model(model, test, "osm", preprocess, tokenizer, progress=False).table,
        evaluate_embeddings(embed_texts(model, texts, tokenizer, progress=False),
                            embed_images(model, tiles, preprocess, progress=False), names, names, texts=texts).table)
    model.rerank_k = 12  # the whole scope re-ranked: the ITM log-odds of every pair
    with torch.no_grad():
        states = model.image_state(torch.stack([preprocess(load_image(p)) for p in tiles]))
        tokens = tokenizer(texts)
        itm = torch.stack([model.match(states, tokens[i].expand(len(test), -1)) for i in range(len(test))])
    got = evaluate_model(model, test, "osm", preprocess, tokenizer, progress=False).table
    pd.testing.assert_frame_equal(got, evaluate(itm, names, names, texts=texts).table)


def test_transformers_text_towers_keep_or_extend_their_positions_by_epe():
    torch.manual_seed(0)
    blip = factory.create("geotextloc-blip-tiny", epe_mode="truncate")[0]
    table = positional_table(blip).detach().clone()
    assert table.shape[0] == 77  # the tiny BLIP's L0 (BLIP's own: 512)
    torch.manual_seed(0)
    model, _, _, tokenizer = factory.create("geotextloc-blip-tiny", context_length=300)
    torch.testing.assert_close(positional_table(model).detach(), extend_positional_embedding(table, 300))
    assert tokenizer(["x"]).shape == (1, 300) and model.text_encoder.embeddings.position_ids.shape == (1, 300)
    torch.manual_seed(0)
    assert torch.equal(positional_table(factory.create("geotextloc-blip-tiny", context_length=50)[0]), table[:50])
    vilt, _, _, tokenizer = factory.create("geotextloc-vilt-tiny", context_length=96, epe_mode="kps")
    assert positional_table(vilt).shape[0] == 96 and tokenizer(["x"]).shape == (1, 96)
    assert vilt.match(vilt.image_state(torch.zeros(1, 3, 64, 64)), tokenizer(["a long text " * 40])).shape == (1,)
    with pytest.raises(ConfigError, match="cannot extend ViltRetrieval's 40 text positions"):
        factory.create("geotextloc-vilt-tiny", context_length=96, epe_mode="native")


@pytest.mark.parametrize("name, tag", [("Salesforce/blip-itm-base-coco", "hub"),
                                       ("dandelin/vilt-b32-finetuned-coco", "hub"),
                                       ("dandelin/vilt-b32-finetuned-coco", None),
                                       ("ViT-B-16-SigLIP", "webli"), ("ViT-B-16-SigLIP", None)])
def test_released_baselines_fail_at_once_offline_with_one_line(name, tag, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OfflineError) as err:
        factory.create(name, tag, cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    assert "\n" not in str(err.value) and "offline" in str(err.value) and "geotextloc-blip-tiny" in str(err.value)


def cached_hub_model(cache: Path, name: str, tiny: str):
    """A Hugging Face cache holding ``name`` as if it had been downloaded: the tiny config's model
    (random weights), its image processor and the BERT-uncased tokenizer, under the Hub name."""
    import shutil

    from transformers import BlipImageProcessor, ViltImageProcessor

    from geotextloc.models import hf, towers

    repo = cache / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    config_class, model_class = hf._classes(hf.family(tiny))
    torch.manual_seed(1)
    retrieval = model_class(config_class(**hf._spec(tiny)["config"]))
    retrieval.save_pretrained(snapshot)
    processor = BlipImageProcessor if hf.family(tiny) == "blip" else ViltImageProcessor
    processor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(snapshot)
    for file in towers.files(towers.MINILM).iterdir():
        if file.name.startswith(("vocab", "tokenizer", "special_tokens")):
            shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return retrieval


@pytest.mark.parametrize("name, tiny", [("Salesforce/blip-itm-base-coco", "geotextloc-blip-tiny"),
                                        ("dandelin/vilt-b32-finetuned-coco", "geotextloc-vilt-tiny")])
def test_released_baselines_load_from_the_hub_cache_offline_and_evaluate(release, name, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    released = cached_hub_model(tmp_path, name, tiny)
    model, _, preprocess, tokenizer = factory.create(name, "hub", epe_mode="truncate", cache_dir=str(tmp_path))
    weights = released.state_dict()
    for key, value in model.state_dict().items():
        if key != "logit_scale":  # BLIP's learnable scale is ours (transformers' model has none)
            part = key if key in weights else key.replace("visual.vision_model.", "vision_model.").replace(
                "visual.proj.", "vision_proj.")
            assert torch.equal(value, weights[part]), key
    assert preprocess.transforms[-1].std == (0.25, 0.25, 0.25)  # the processor's normalisation
    assert tokenizer(["x"]).shape == (1, positional_table(model).shape[0])  # its own positions (truncate)
    report = evaluate_model(model, release[2], "osm", preprocess, tokenizer, progress=False)
    assert report.to_dict()["overall"]["Count"] == 12
    random = factory.create(name, None, cache_dir=str(tmp_path))[0]  # the architecture, random weights
    assert type(random) is type(model) and not torch.equal(positional_table(random), positional_table(model))


def test_zero_shot_rows_of_blip_and_vilt_are_skipped_offline_with_one_line(release, monkeypatch):
    from geotextloc.config import load_profile
    from geotextloc.eval.cities import evaluate_zero_shot

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for profile in ("smoke", "tiny", "paper"):
        listed = [name for name, _ in load_profile("crosstext2loc_experiments", profile)["zero_shot"]]
        assert {"Salesforce/blip-itm-base-coco", "dandelin/vilt-b32-finetuned-coco"} <= set(listed)
    with pytest.raises(OfflineError, match="Salesforce/blip-itm-base-coco.*offline"):
        evaluate_zero_shot("Salesforce/blip-itm-base-coco", "hub", release[2], "osm")


def test_unknown_names_unfit_losses_and_unsupported_keys_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'Salesforce/blip-image-captioning-base'.*blip-itm-base-coco"):
        factory.create("Salesforce/blip-image-captioning-base", "hub")
    with pytest.raises(ConfigError, match="geotextloc-vilt-tiny is a tiny random-init config without released"):
        factory.create("geotextloc-vilt-tiny", "hub")
    with pytest.raises(DataError, match="missing.pt: checkpoint file not found"):
        factory.create("geotextloc-blip-tiny", str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="loss='pairs' does not fit geotextloc-siglip-tiny; its losses: clip, siglip"):
        build_model(from_dict({"model": "geotextloc-siglip-tiny", "pretrained": None, "loss": "pairs"}))
    with pytest.raises(ConfigError, match="config: train_last_k, cache_features and text_dropout apply to open_clip"):
        from_dict({"model": "geotextloc-vilt-tiny", "text_dropout": 0.3})
    with pytest.raises(ConfigError, match="rerank_k applies to BLIP models"):
        from_dict({"model": "geotextloc-vilt-tiny", "rerank_k": 4})
    assert [factory.model_loss(n) for n in ("ViT-L-14-336", "ViT-B-16-SigLIP", "geotextloc-siglip-tiny",
                                           "Salesforce/blip-itm-base-coco", "geotextloc-vilt-tiny")] \
        == ["clip", "siglip", "siglip", "itc+itm", "pairs"]
