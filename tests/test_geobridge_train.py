"""GeoBridge through the shared training loop: configs, exact resume, the ablation modes'
gradients, last-k fine-tuning, the train command, checkpoints, and torchrun vs one process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geotextloc.data.geoloc_manifest import read_geoloc
from geotextloc.errors import ConfigError
from geotextloc.eval.multiview import IMAGE_DIRECTIONS, evaluate_multiview
from geotextloc.train import commands
from geotextloc.train.config import from_dict, load_config
from geotextloc.train.loop import build_model, load_checkpoint, train

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_geoloc import make_geoloc  # noqa: E402

torch.set_num_threads(1)
CONFIGS = Path(__file__).parents[1] / "configs"
TORCHRUN = Path(sys.executable).parent / "torchrun"
WORKER = Path(__file__).parent / "ddp_worker.py"  # its `loop` mode runs train(from_dict(config))


@pytest.fixture(scope="module")
def geoloc(tmp_path_factory):
    root = tmp_path_factory.mktemp("geoloc")
    make_geoloc(root, n_train=16, n_test=8, size=32)
    return root


def tiny(root, out_dir, **overrides):
    values = dict(task="geobridge", model="geotextloc-tiny", pretrained=None, context_length=64, image_size=32,
                  data_root=str(root), batch_size=8, epochs=2, lr=1e-3, adam_eps=1e-6, device="cpu",
                  eval_scope=8, eval_batch_size=16, out_dir=str(out_dir))
    return from_dict(values | overrides)


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("profile", ["smoke", "tiny", "paper"])
def test_profiles_load_and_select_the_task_mode_and_missing_share(profile):
    cfg = load_config(CONFIGS / profile / "geobridge.yaml", ["mode=text-only", "missing_share=0.3"])
    assert (cfg.task, cfg.mode, cfg.missing_view, cfg.missing_share) == ("geobridge", "text-only", "satellite", 0.3)
    if profile == "paper":  # CLIP-L/14 at 224 px, Adam 1e-5, cosine, batch 32, 200 epochs, all layers
        assert (cfg.model, cfg.pretrained, cfg.image_size, cfg.batch_size, cfg.lr, cfg.epochs) == \
            ("ViT-L-14", "openai", None, 32, 1e-5, 200)
        assert cfg.train_last_k is None and load_config(CONFIGS / profile / "geobridge.yaml").mode == "fused"
    if profile == "tiny":  # the pretrained towers, locked and cached
        assert (cfg.model, cfg.pretrained, cfg.cache_features, cfg.batch_size) == \
            ("geotextloc-minilm-mnv2", "wheels", True, 32)


def test_bad_geobridge_settings_name_the_key():
    path = CONFIGS / "tiny" / "geobridge.yaml"
    with pytest.raises(ConfigError, match="mode='both'; choose one of image-only, text-only, fused"):
        load_config(path, ["mode=both"])
    with pytest.raises(ConfigError, match=r"missing_share=1.5; expected a number in \[0, 1\]"):
        load_config(path, ["missing_share=1.5"])
    with pytest.raises(ConfigError, match="missing_view='osm'"):
        load_config(path, ["missing_view=osm"])
    with pytest.raises(ConfigError, match="task='retrieval'"):
        load_config(path, ["task=retrieval"])
    with pytest.raises(ConfigError, match="missing_share applies to task=geobridge only"):
        load_config(CONFIGS / "tiny" / "crosstext2loc.yaml", ["missing_share=0.5"])


def test_resume_one_plus_one_epochs_equals_two(geoloc, tmp_path):
    # missing satellite tiles (masks) and random crops (RNG state) both take part
    straight = tiny(geoloc, tmp_path / "straight", missing_share=0.25)
    train(straight)
    assert train(tiny(geoloc, tmp_path / "resumed", missing_share=0.25, stop_after_epoch=1))["epoch"] == 1
    with pytest.raises(ConfigError, match="different mode"):
        train(tiny(geoloc, tmp_path / "resumed", missing_share=0.25, mode="text-only", resume=True))
    summary = train(tiny(geoloc, tmp_path / "resumed", missing_share=0.25, resume=True))
    assert (summary["epoch"], summary["step"]) == (2, 4)

    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["loss"] for r in a if r["kind"] == "train"] == [r["loss"] for r in b if r["kind"] == "train"]
    assert [r["step"] for r in b] == [1, 2, 2, 3, 4, 4]
    evals = [r for r in b if r["kind"] == "eval"]
    assert [r["whole"] for r in a if r["kind"] == "eval"] == [r["whole"] for r in evals]
    assert set(IMAGE_DIRECTIONS) <= set(evals[-1]["whole"]) and evals[-1]["scoped"]["P2D"]["Count"] == 8
    last_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert set(last_a["model"]) == set(last_b["model"])
    for name, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][name]), name
    assert {"best.pt", "best_queries.csv"} <= {p.name for p in (tmp_path / "resumed").iterdir()}


def changed_parameters(cfg) -> set[str]:
    """Names of the GeoBridge parameters that one epoch of ``cfg`` changed."""
    torch.manual_seed(cfg.seed)
    before = {k: v.clone() for k, v in build_model(cfg)[0].state_dict().items()}
    train(cfg)
    after = torch.load(Path(cfg.out_dir) / "last.pt", weights_only=True)["model"]
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_image_only_leaves_the_text_tower_untouched_and_text_only_trains_it(geoloc, tmp_path):
    image_only = changed_parameters(tiny(geoloc, tmp_path / "img", mode="image-only", epochs=1, eval_every=0))
    assert "text.logit_scale" in image_only
    assert not any(k.startswith("text.") for k in image_only - {"text.logit_scale"})
    for view in ("drone", "street", "satellite"):
        assert f"encoders.{view}.transformer.resblocks.0.attn.in_proj_weight" in image_only

    text_only = changed_parameters(tiny(geoloc, tmp_path / "txt", mode="text-only", epochs=1, eval_every=0))
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in text_only
    assert "encoders.street.transformer.resblocks.0.attn.in_proj_weight" in text_only


def test_train_last_k_fine_tunes_only_the_last_blocks_of_every_tower(geoloc, tmp_path):
    changed = changed_parameters(tiny(geoloc, tmp_path, train_last_k=1, epochs=1, eval_every=0))
    for view in ("drone", "street", "satellite"):
        assert f"encoders.{view}.transformer.resblocks.3.mlp.c_fc.weight" in changed
        assert f"encoders.{view}.proj" in changed
    assert {"text.transformer.resblocks.3.attn.in_proj_weight", "text.text_projection"} <= changed
    assert not any(".resblocks.2." in k or "embedding" in k for k in changed)


def test_train_command_then_checkpoint_evaluation(geoloc, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--config", str(CONFIGS / "smoke" / "geobridge.yaml"),
                              f"data_root={geoloc}", f"out_dir={out}", "missing_share=0.5"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    assert {"last.pt", "best.pt", "metrics.jsonl", "best_queries.csv"} <= {p.name for p in out.iterdir()}

    model, transforms, tokenizer, cfg = load_checkpoint(out / "last.pt")
    assert (cfg.task, cfg.missing_share) == ("geobridge", 0.5)
    test = read_geoloc(geoloc, splits=["test"])
    report = evaluate_multiview(model, test, transforms, tokenizer, scope=8, progress=False)
    logged = [r for r in read_metrics(out) if r["kind"] == "eval"][-1]
    for direction, metrics in report.to_dict()["whole"].items():  # the same model and protocol
        assert metrics == pytest.approx(logged["whole"][direction]), direction


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fused", "image-only"])
def test_torchrun_geobridge_run_matches_one_process(geoloc, tmp_path, mode):
    # masks for missing satellite tiles travel with the gathered embeddings; image-only mode
    # runs under DDP without find_unused_parameters (the text tower is frozen)
    base = dict(task="geobridge", model="geotextloc-tiny", pretrained=None, context_length=64, image_size=32,
                data_root=str(geoloc), batch_size=8, epochs=1, lr=1e-3, adam_eps=1e-6, augment=False,
                device="cpu", eval_every=0, mode=mode, missing_share=0.5)
    (tmp_path / "two.json").write_text(json.dumps(dict(base, out_dir=str(tmp_path / "two"))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(WORKER), "loop",
                           str(tmp_path / "two.json")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train(from_dict(dict(base, out_dir=str(tmp_path / "one"))))
    losses = {run: [r["loss"] for r in read_metrics(tmp_path / run) if r["kind"] == "train"] for run in ("one", "two")}
    assert len(losses["one"]) == 2 and losses["one"] == pytest.approx(losses["two"], rel=1e-5)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=1e-4), name


def towers_bridge(root, out_dir, **overrides):
    values = dict(task="geobridge", model="geotextloc-minilm-mnv2", pretrained="wheels", epe="interpolate",
                  context_length=96, image_size=64, train_last_k=2, cache_features=True, augment=False,
                  data_root=str(root), batch_size=8, epochs=2, lr=1e-3, device="cpu", eval_scope=100,
                  eval_every=2, out_dir=str(out_dir))
    return from_dict(values | overrides)


@pytest.mark.parametrize("mode", ["fused", "image-only"])
def test_geobridge_on_pretrained_towers_trains_cached_view_tails_and_resumes_exactly(geoloc, tmp_path, mode):
    from geotextloc.models import factory

    cfg = towers_bridge(geoloc, tmp_path / "a", mode=mode, feature_cache=str(tmp_path / "features"),
                        missing_share=0.25)
    train(cfg)
    caches = sorted(p.name.split("-")[1] for p in (tmp_path / "features").glob("image-*.safetensors"))
    assert caches == ["drone", "satellite", "street"]
    from geotextloc.train.loop import seed_everything

    seed_everything(cfg.seed)  # as train() does before it builds the model: the same new heads
    start = factory.create("geotextloc-minilm-mnv2", "wheels", 96, "interpolate", image_size=64)[0].state_dict()
    after = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    changed = {k for k in after if k.startswith("encoders.") and
               not torch.equal(after[k], start["visual." + k.split(".", 2)[2]])}
    for view in ("drone", "street", "satellite"):
        assert any(k.startswith(f"encoders.{view}.trunk.blocks.6.") for k in changed)
        assert any(k == f"encoders.{view}.head.proj.weight" for k in changed)
        assert not any(k.startswith((f"encoders.{view}.trunk.blocks.3.", f"encoders.{view}.trunk.conv_stem"))
                       for k in changed)
    text_proj = torch.equal(after["text.text.proj.weight"], start["text.proj.weight"])
    assert text_proj == (mode == "image-only")  # image-only: the text tower gets no gradient at all

    train(towers_bridge(geoloc, tmp_path / "b", mode=mode, feature_cache=str(tmp_path / "features"),
                        missing_share=0.25, stop_after_epoch=1))
    train(towers_bridge(geoloc, tmp_path / "b", mode=mode, feature_cache=str(tmp_path / "features"),
                        missing_share=0.25, resume=True))
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["kind"] == "train"] for run in ("a", "b")]
    assert losses[0] == losses[1]
    model, _, _, _ = load_checkpoint(tmp_path / "a" / "best.pt")  # the whole model, for evaluation
    assert set(model.encoders) == {"drone", "street", "satellite"}


def test_memoised_geobridge_evaluation_equals_running_every_tower_whole(geoloc, tmp_path):
    from geotextloc.data.images import load_image
    from geotextloc.eval.embed import embed_records

    model, _, transforms, tokenizer = build_model(towers_bridge(geoloc, tmp_path / "a"), "cpu")
    model.eval()
    records = [r for r in read_geoloc(geoloc) if r.split == "test"]
    kinds = ["drone", "street", "satellite", "text"]

    def whole(kind):
        with torch.no_grad():
            if kind == "text":
                return model.encode_text(tokenizer([r.text for r in records])).numpy()
            images = torch.stack([transforms[kind](load_image(r.images[kind])) for r in records])
            return model.encode(kind, images).numpy()

    memo = embed_records(model, records, transforms, tokenizer, kinds, batch_size=3, progress=False)
    for kind in kinds:
        assert memo[kind].names == [r.name for r in records]
        # the stems' feature maps are kept in float16
        assert abs(memo[kind].vectors - whole(kind)).max() < (2e-3 if kind != "text" else 1e-5)
    with torch.no_grad():  # a fine-tuned drone stem gets its own entries
        model.encoders["drone"].trunk.conv_stem.weight.mul_(0.5)
    again = embed_records(model, records, transforms, tokenizer, ["drone"], progress=False)["drone"].vectors
    assert abs(again - whole("drone")).max() < 2e-3
