"""Training: configs, data, exact resume, partial fine-tuning, and the train/evaluate commands."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from geotextloc.errors import ConfigError, DataError
from geotextloc.models import factory
from geotextloc.train import commands
from geotextloc.train.config import from_dict, load_config
from geotextloc.train.data import Pairs, drop_tokens
from geotextloc.train.loop import cosine_schedule, train

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)
CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    train_records, test_records = make_release(root, n_train=24, n_test=12)
    return root, train_records, test_records


def tiny(out_dir, **overrides):
    values = dict(model="geotextloc-tiny", pretrained=None, context_length=96, image_size=32, batch_size=8,
                  epochs=2, lr=1e-3, adam_eps=1e-6, device="cpu", eval_scope=12, out_dir=str(out_dir))
    return from_dict(values | overrides)


@pytest.mark.parametrize("profile", ["smoke", "tiny", "scratch", "paper"])
def test_profiles_load_with_typed_overrides(profile):
    cfg = load_config(CONFIGS / profile / "crosstext2loc.yaml", ["epochs=3", "lr=3e-4", "view=osm"])
    assert (cfg.epochs, cfg.lr, cfg.view) == (3, 3e-4, "osm")
    if profile == "paper":  # the paper's settings
        assert (cfg.model, cfg.pretrained, cfg.context_length, cfg.batch_size) == ("ViT-L-14-336", "openai", 300, 128)
        assert load_config(CONFIGS / "paper" / "crosstext2loc.yaml").lr == 1e-5
    if profile == "tiny":  # the pretrained towers, locked and cached, selected on validation
        assert (cfg.model, cfg.pretrained, cfg.cache_features) == ("geotextloc-minilm-mnv2", "wheels", True)
        assert cfg.val_share > 0


def test_bad_configs_name_the_source(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: geotextloc-tiny\nviews: sat\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: unknown key 'views' \(did you mean 'view'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="view='street'"):
        load_config(CONFIGS / "tiny" / "crosstext2loc.yaml", ["view=street"])
    with pytest.raises(ConfigError, match="is not key=value"):
        load_config(CONFIGS / "tiny" / "crosstext2loc.yaml", ["epochs"])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factor = cosine_schedule(warmup=4, total=14)
    assert [factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.5) and factor(14) == pytest.approx(0.0)


def test_pairs_give_view_images_and_tokens_and_name_records_without_the_view(release):
    _, train_records, _ = release
    _, _, val_tf, tokenizer = factory.create("geotextloc-tiny", context_length=96, image_size=32)
    image, tokens = Pairs(train_records, "osm", val_tf, tokenizer)[0]
    assert image.shape == (3, 32, 32) and tokens.shape == (96,)
    record = replace(train_records[3], images={"osm": train_records[3].images["osm"]})
    with pytest.raises(DataError, match=f"record '{record.name}' has no 'satellite' image"):
        Pairs([*train_records[:3], record], "sat", val_tf, tokenizer)


def test_cached_pairs_equal_pairs_read_from_files(release):
    _, train_records, _ = release
    _, _, val_tf, tokenizer = factory.create("geotextloc-tiny", context_length=96, image_size=32)
    records = [*train_records[:5], train_records[0]]  # one tile with two entries is read once
    files, cached = Pairs(records, "osm", val_tf, tokenizer), Pairs(records, "osm", val_tf, tokenizer, cache=True)
    assert len(cached.images) == 5
    for i in range(len(records)):
        assert torch.equal(files[i][0], cached[i][0]) and torch.equal(files[i][1], cached[i][1])
    with pytest.raises(ConfigError, match="cache_images: true needs augment: false"):
        tiny("unused", cache_images=True)


def test_word_dropout_keeps_start_end_and_order_and_repads():
    _, _, _, tokenizer = factory.create("geotextloc-tiny", context_length=40, image_size=32)
    tokens = tokenizer(["a bus stop on my right and a pharmacy across the road", "park"])
    dropped = drop_tokens(tokens, 0.5, torch.Generator().manual_seed(0))
    for before, after in zip(tokens, dropped):
        kept = after[after != 0].tolist()
        body = before[before != 0].tolist()
        assert kept[0] == body[0] and kept[-1] == body[-1] == tokens.max()  # start, end of text
        inner = iter(body[1:-1])
        assert all(t in inner for t in kept[1:-1])  # a subsequence: order kept
        assert (after[len(kept):] == 0).all()  # re-padded after the end token
    assert len(dropped[0][dropped[0] != 0]) < len(tokens[0][tokens[0] != 0])  # 12 body tokens at p=0.5
    assert torch.equal(drop_tokens(tokens, 0.0), tokens)
    everything = drop_tokens(tokens, 0.999, torch.Generator().manual_seed(1))
    assert everything[:, :2].tolist() == [[49406, 49407]] * 2 and not everything[:, 2:].any()
    with pytest.raises(ConfigError, match="text_dropout=1.0"):
        tiny("unused", text_dropout=1.0)


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_exactly_like_an_uninterrupted_run(release, tmp_path):
    _, train_records, test_records = release
    straight = tiny(tmp_path / "straight")  # augment=True: the crops draw from the restored RNG
    train(straight, train_records, test_records)

    interrupted = tiny(tmp_path / "resumed", stop_after_epoch=1)
    cached = dict(augment=False, cache_images=True, text_dropout=0.3)  # word dropout draws from the RNG too
    train(tiny(tmp_path / "cached", **cached), train_records, test_records)
    train(tiny(tmp_path / "cached-resumed", stop_after_epoch=1, **cached), train_records, test_records)
    with open(tmp_path / "cached-resumed" / "metrics.jsonl", "a") as torn:  # a crash in the middle of a write
        torn.write('{"kind": "train", "epo')
    train(tiny(tmp_path / "cached-resumed", resume=True, **cached), train_records, test_records)
    a, b = read_metrics(tmp_path / "cached"), read_metrics(tmp_path / "cached-resumed")
    assert [r["loss"] for r in a if r["kind"] == "train"] == [r["loss"] for r in b if r["kind"] == "train"]

    assert train(interrupted, train_records, test_records)["epoch"] == 1
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny(tmp_path / "resumed"), train_records, test_records)
    with pytest.raises(ConfigError, match="different lr"):
        train(tiny(tmp_path / "resumed", resume=True, lr=1e-2), train_records, test_records)
    summary = train(tiny(tmp_path / "resumed", resume=True), train_records, test_records)
    assert (summary["epoch"], summary["step"]) == (2, 6)

    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["loss"] for r in a if r["kind"] == "train"] == [r["loss"] for r in b if r["kind"] == "train"]
    assert [r["step"] for r in b] == [1, 2, 3, 3, 4, 5, 6, 6]  # no duplicated rows after resuming
    assert [r["overall"] for r in a if r["kind"] == "eval"] == [r["overall"] for r in b if r["kind"] == "eval"]
    last_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for name, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][name]), name
    assert (tmp_path / "resumed" / "best.pt").exists() and not list((tmp_path / "resumed").glob(".*tmp*"))


def test_train_last_k_updates_only_the_last_blocks(release, tmp_path):
    _, train_records, _ = release
    torch.manual_seed(0)
    before = factory.create("geotextloc-tiny", context_length=96, image_size=32)[0].state_dict()
    train(tiny(tmp_path, train_last_k=1, epochs=1, eval_every=0), train_records)
    after = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "visual.transformer.resblocks.3.mlp.c_fc.weight" in changed
    assert "transformer.resblocks.3.attn.in_proj_weight" in changed
    assert {"visual.proj", "text_projection", "logit_scale"} <= changed
    assert not any(".resblocks.2." in k or "embedding" in k for k in changed)


@pytest.mark.parametrize("task", ["crosstext2loc", "geobridge"])
def test_grad_checkpointing_recomputes_without_changing_the_step(task):
    """grad_checkpointing: true (the paper profile's, for batch 128 on one GPU) turns recomputation on
    in every tower and leaves the loss and the gradients of a training step as they were."""
    from geotextloc.train.loop import build_model
    from geotextloc.train.losses import contrastive_loss

    grads = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny("unused", task=task, grad_checkpointing=on))[0]
        towers = [model.text.transformer, *(e.transformer for e in model.encoders.values())] \
            if task == "geobridge" else [model.transformer, model.visual.transformer]
        assert all(t.grad_checkpointing == on for t in towers)
        calls = []  # the blocks' forward runs again in the backward pass when checkpointing recomputes
        for tower in towers:
            tower.resblocks[0].register_forward_pre_hook(lambda module, args: calls.append(module))
        torch.manual_seed(1)
        texts = torch.randint(1, 49000, (4, 96))
        if task == "geobridge":
            from geotextloc.models.geobridge import VIEWS, GeoBridgeLoss

            images = {v: torch.randn(4, 3, 32, 32) for v in VIEWS}
            masks = {k: torch.ones(4, dtype=torch.bool) for k in (*VIEWS, "text")}
            features = model(images, texts)
            loss = GeoBridgeLoss("fused")(features, features["logit_scale"], masks)
        else:
            loss = contrastive_loss()(*model(torch.randn(4, 3, 32, 32), texts)[:3])
        forward_calls = len(calls)
        loss.backward()
        assert len(calls) == (2 if on else 1) * forward_calls
        grads[on] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_train_and_evaluate_commands_on_a_release_folder(release, tmp_path, capsys):
    root, _, _ = release
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--config", str(CONFIGS / "smoke" / "crosstext2loc.yaml"),
                              f"data_root={root}", "versions=[Synth]", f"out_dir={out}", "image_size=32"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    assert {"last.pt", "best.pt", "metrics.jsonl", "best_queries.csv"} <= {p.name for p in out.iterdir()}

    args = parser.parse_args(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(root),
                              "--city", "Synth", "--view", "osm", "--out", str(tmp_path / "eval")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "R@1" in printed and "panorama" in printed and "single_view" in printed
    report = json.loads((tmp_path / "eval" / "Synth-osm.json").read_text())
    assert report["overall"]["Count"] == 12 and report["view"] == "osm"
    assert (tmp_path / "eval" / "Synth-osm-queries.csv").exists()
