"""Nothing read unchecked: every reader answers a bad file with one line naming it, and no code runs.

Bad checkpoints, resume states, index folders, feature caches and release files, each through the
real CLI where a command reads it (``geotextloc.cli.main``: exit 2, one stderr line naming the file,
no traceback, nothing written) or through the library reader otherwise (a ``GeotextlocError``).
The good files come from the package itself: a tiny model trained by ``geotextloc train`` and an
index built by ``geotextloc index``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from geotextloc.cli import main
from geotextloc.data.geoloc_manifest import read_geoloc
from geotextloc.data.release import read_release
from geotextloc.errors import DataError, GeotextlocError
from geotextloc.models import checkpoints
from geotextloc.train import cached

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_geoloc import make_geoloc  # noqa: E402
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)
CONFIG = """model: geotextloc-tiny
pretrained: null
context_length: 96
image_size: 32
batch_size: 8
epochs: 2
lr: 1.0e-3
adam_eps: 1.0e-6
device: cpu
eval_scope: 12
view: osm
versions: [Synth]
data_root: {root}
out_dir: {out}
"""


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A release, a tiny run after its first epoch (last.pt, best.pt) and a gallery index, all
    written by the package's own commands."""
    base = tmp_path_factory.mktemp("bad-inputs")
    root = base / "release"
    make_release(root, n_train=16, n_test=8)
    config = base / "tiny.yaml"
    config.write_text(CONFIG.format(root=root, out=base / "run"))
    assert main(["train", "--config", str(config), "stop_after_epoch=1"]) == 0
    assert {"last.pt", "best.pt"} <= {p.name for p in (base / "run").iterdir()}
    assert main(["index", "--checkpoint", str(base / "run" / "best.pt"), "--data", str(root),
                 "--version", "Synth", "--view", "osm", "--out", str(base / "index")]) == 0
    return {"root": root, "config": config, "run": base / "run", "index": base / "index"}


def refused(capfd, argv: list[str], name: str | Path) -> str:
    """Run the CLI; assert exit 2, exactly one stderr line naming ``name``, no traceback."""
    capfd.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geotextloc: error: "), err
    assert str(name) in lines[0] and "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every file under ``folder`` (to show nothing was written)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tensor_span(path: Path) -> tuple[int, int]:
    """(byte offset, size) of the largest tensor's bytes inside a torch.save zip."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def scribble(path: Path) -> None:
    """Overwrite 4 KiB in the middle of the largest tensor with (seeded) random bytes."""
    start, size = tensor_span(path)
    assert size > 3 * 4096
    with open(path, "r+b") as f:
        f.seek(start + size // 2 // 4 * 4)
        f.write(random.Random(0).randbytes(4096))


def without_checksum(path: Path) -> None:
    """Re-save ``path`` as an older run (or released weights) would have it: no checksum."""
    obj = torch.load(path, weights_only=True)
    del obj[checkpoints.CHECKSUM]
    torch.save(obj, path)


def malicious_zip(path: Path, marker: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"model": "geotextloc-tiny"}, "x": Payload(marker)}, path)


def malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))


def test_the_payloads_are_live(tmp_path):
    """The malicious files below would run code if read unchecked (so their tests can fail)."""
    for write, load in ((malicious_zip, lambda p: torch.load(p, weights_only=False)),
                        (malicious_pickle, lambda p: pickle.loads(p.read_bytes()))):
        marker = tmp_path / f"ran-{write.__name__}"
        write(tmp_path / "file.pt", marker)
        load(tmp_path / "file.pt")
        assert marker.exists()


# ----------------------------------------------------------------------------- checkpoints
def corrupted(path, marker):
    scribble(path)


def corrupted_old(path, marker):  # no checksum: the NaN/inf the random bytes make are refused
    without_checksum(path)
    scribble(path)


def truncated(path, marker):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path, marker):
    path.write_bytes(random.Random(1).randbytes(50_000))


def empty(path, marker):
    path.write_bytes(b"")


def not_a_dict(path, marker):
    torch.save([torch.zeros(3), 1], path)


def diverged(path, marker):  # the checksum is sound; the weights are not
    obj = checkpoints.read_checkpoint(path)
    next(iter(obj["model"].values())).fill_(float("nan"))
    checkpoints.save_checkpoint(obj, path)


def config_without_model(path, marker):
    obj = checkpoints.read_checkpoint(path)
    del obj["config"]["model"]
    checkpoints.save_checkpoint(obj, path)


def config_of_wrong_type(path, marker):
    obj = checkpoints.read_checkpoint(path)
    obj["config"]["context_length"] = "ninety-six"
    checkpoints.save_checkpoint(obj, path)


def config_not_a_mapping(path, marker):
    obj = checkpoints.read_checkpoint(path)
    obj["config"] = ["geotextloc-tiny"]
    checkpoints.save_checkpoint(obj, path)


def config_unknown_model(path, marker):
    obj = checkpoints.read_checkpoint(path)
    obj["config"]["model"] = "no-such-model"
    checkpoints.save_checkpoint(obj, path)


def foreign_weights(path, marker):  # the config says geotextloc-tiny; the tensors are another model's
    obj = checkpoints.read_checkpoint(path)
    obj["model"] = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.dim() else v for k, v in obj["model"].items()}
    checkpoints.save_checkpoint(obj, path)


CHECKPOINT_CASES = {  # how the file is spoilt -> what the one line says
    corrupted: "corrupted: its tensors do not match the checksum saved with it",
    corrupted_old: "holds NaN or infinite values",
    truncated: "not a readable weights-only checkpoint",
    random_bytes: "not a readable weights-only checkpoint",
    empty: "not a readable weights-only checkpoint",
    malicious_zip: "refused unread",
    malicious_pickle: "refused unread",
    not_a_dict: "expected a state dict",
    diverged: "holds NaN or infinite values",
    config_without_model: "its config has no 'model'",
    config_of_wrong_type: "a bad ('ninety-six') 'context_length'",
    config_not_a_mapping: "its 'config' is a list",
    config_unknown_model: "unknown model 'no-such-model'",
    foreign_weights: "has shape",
}


@pytest.mark.parametrize("spoil", CHECKPOINT_CASES, ids=lambda f: f.__name__)
def test_evaluate_refuses_a_bad_checkpoint_in_one_line(run, tmp_path, capfd, spoil):
    checkpoint, marker, out = tmp_path / "best.pt", tmp_path / "code-ran", tmp_path / "eval"
    shutil.copy(run["run"] / "best.pt", checkpoint)
    spoil(checkpoint, marker)
    line = refused(capfd, ["evaluate", "--checkpoint", checkpoint, "--data", run["root"], "--city", "Synth",
                           "--view", "osm", "--out", out], checkpoint)
    assert CHECKPOINT_CASES[spoil] in line
    assert not out.exists() and not marker.exists()


def test_the_checksum_is_what_catches_scribbled_tensors(run, tmp_path, capfd):
    """torch alone reads the scribbled file (finite garbage, no checksum): the checksum refuses it,
    the intact file evaluates."""
    checkpoint = tmp_path / "best.pt"
    shutil.copy(run["run"] / "best.pt", checkpoint)
    argv = ["evaluate", "--checkpoint", checkpoint, "--data", run["root"], "--city", "Synth", "--view", "osm",
            "--out", tmp_path / "eval"]
    assert main([str(a) for a in argv]) == 0
    start, size = tensor_span(checkpoint)
    with open(checkpoint, "r+b") as f:  # 4 KiB of small finite floats: no NaN/inf to notice
        f.seek(start + size // 2 // 4 * 4)
        f.write(np.random.default_rng(0).uniform(-1, 1, 1024).astype(np.float32).tobytes())
    torch.load(checkpoint, weights_only=True)  # loads without complaint
    assert "corrupted" in refused(capfd, argv, checkpoint)


# ----------------------------------------------------------------------------- resume
def drop(key):
    def without_key(path, marker):
        obj = checkpoints.read_checkpoint(path)
        del obj[key]
        checkpoints.save_checkpoint(obj, path)
    without_key.__name__ = f"without_{key}"
    return without_key


def best_as_last(path, marker):
    shutil.copy(path.with_name("best.pt"), path)


def foreign_model_state(path, marker):
    obj = checkpoints.read_checkpoint(path)
    obj["model"] = {f"other.{k}": v for k, v in obj["model"].items()}
    checkpoints.save_checkpoint(obj, path)


def foreign_optimizer_state(path, marker):
    obj = checkpoints.read_checkpoint(path)
    for entry in obj["optimizer"]["state"].values():
        entry["exp_avg"] = torch.zeros(3, 3)
    checkpoints.save_checkpoint(obj, path)


RESUME_CASES = {
    corrupted: "corrupted",
    truncated: "not a readable weights-only checkpoint",
    random_bytes: "not a readable weights-only checkpoint",
    malicious_zip: "refused unread",
    malicious_pickle: "refused unread",
    not_a_dict: "holds a list, not a training state",
    drop("optimizer"): "not a training state (no 'optimizer')",
    drop("scheduler"): "not a training state (no 'scheduler')",
    drop("rng"): "not a training state (no 'rng')",
    drop("epoch"): "not a training state (no 'epoch')",
    best_as_last: "not a training state (no 'optimizer')",
    foreign_model_state: "its model weights are not this run's model",
    foreign_optimizer_state: "its optimizer state does not match",
    diverged: "holds NaN or infinite values",
}


@pytest.mark.parametrize("spoil", RESUME_CASES, ids=lambda f: f.__name__)
def test_resume_refuses_a_bad_last_pt_before_writing_anything(run, tmp_path, capfd, spoil):
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    shutil.copytree(run["run"], out)
    spoil(out / "last.pt", marker)
    before = snapshot(out)
    line = refused(capfd, ["train", "--config", run["config"], "--resume", f"out_dir={out}"], out / "last.pt")
    assert RESUME_CASES[spoil] in line and "delete it or pick another out_dir" in line
    assert snapshot(out) == before and not marker.exists()


def test_resume_from_a_sound_last_pt_still_works(run, tmp_path, capfd):
    out = tmp_path / "run"
    shutil.copytree(run["run"], out)
    assert main(["train", "--config", str(run["config"]), "--resume", f"out_dir={out}"]) == 0
    assert json.loads(capfd.readouterr().out.strip().splitlines()[-1])["epoch"] == 2
    assert checkpoints.read_checkpoint(out / "last.pt")["epoch"] == 2  # verified on the way


# ----------------------------------------------------------------------------- index folders
def edit_meta(change, name: str = "meta_edited"):
    def spoil(folder, marker):
        meta = json.loads((folder / "meta.json").read_text())
        change(meta)
        (folder / "meta.json").write_text(json.dumps(meta))
    spoil.__name__ = name
    return spoil


def no_meta(folder, marker):
    (folder / "meta.json").unlink()


def garbled_meta(folder, marker):
    (folder / "meta.json").write_text((folder / "meta.json").read_text()[:40])


def truncated_vectors(folder, marker):
    path = folder / "embeddings.npy"
    path.write_bytes(path.read_bytes()[:-100])


def truncated_vectors_old(folder, marker):  # an index written before the checksums
    edit_meta(lambda meta: meta.pop("sha256"))(folder, marker)
    truncated_vectors(folder, marker)


def vectors_of_other_shape(folder, marker):
    edit_meta(lambda meta: meta.pop("sha256"))(folder, marker)
    vectors = np.load(folder / "embeddings.npy")
    np.save(folder / "embeddings.npy", vectors[:, :-1])


def missing_vectors(folder, marker):
    (folder / "embeddings.npy").unlink()


def pickled_vectors(folder, marker):
    edit_meta(lambda meta: meta.pop("sha256"))(folder, marker)
    np.save(folder / "embeddings.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)


def fewer_names(folder, marker):
    edit_meta(lambda meta: meta.pop("sha256"))(folder, marker)
    lines = (folder / "records.jsonl").read_text().splitlines()
    (folder / "records.jsonl").write_text("\n".join(lines[:-1]) + "\n")


def garbled_faiss(folder, marker):
    edit_meta(lambda meta: meta.pop("sha256"))(folder, marker)
    (folder / "index.faiss").write_bytes(random.Random(2).randbytes(4000))


def scribbled_faiss(folder, marker):
    path = folder / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = random.Random(3).randbytes(64)
    path.write_bytes(bytes(data))


INDEX_CASES = {
    no_meta: "not a gallery index (no meta.json)",
    garbled_meta: "broken gallery index",
    edit_meta(lambda meta: meta.pop("kind"), "meta_without_kind"): "meta.json has no 'kind'",
    edit_meta(lambda meta: meta.update(kind="annoy"), "meta_unknown_kind"): "unknown kind 'annoy'",
    edit_meta(lambda meta: meta.update(count="12"), "meta_count_a_string"): "count='12'",
    edit_meta(lambda meta: meta.update(dim=meta["dim"] + 1), "meta_other_dim"): "meta.json says float32",
    edit_meta(lambda meta: meta.update(compress="zip"), "meta_unknown_compress"): "compress='zip'",
    edit_meta(lambda meta: meta.update(compress="pq"), "meta_pq_of_a_flat_index"): "pq with kind ivf only",
    edit_meta(lambda meta: meta.update(compress="float16"), "meta_float16_of_float32"): "meta.json says float16",
    edit_meta(lambda meta: meta.update(recall_at_10=1.5), "meta_recall_above_one"): "recall_at_10=1.5",
    edit_meta(lambda meta: meta.update(recall_sample=0.5), "meta_recall_sample_a_float"): "recall_sample=0.5",
    edit_meta(lambda meta: meta.pop("recall_sample"), "meta_recall_without_sample"): "only one of recall_at_10",
    missing_vectors: "embeddings.npy is missing",
    truncated_vectors: "embeddings.npy does not match the sha256",
    truncated_vectors_old: "broken gallery index",
    vectors_of_other_shape: "embeddings.npy holds float32",
    pickled_vectors: "broken gallery index",
    fewer_names: "records,",
    garbled_faiss: "index.faiss is not a readable FAISS index",
    scribbled_faiss: "index.faiss does not match the sha256",
}


@pytest.mark.parametrize("spoil", INDEX_CASES, ids=lambda f: f.__name__)
def test_search_refuses_a_bad_index_folder_in_one_line(run, tmp_path, capfd, spoil):
    folder, marker = tmp_path / "index", tmp_path / "code-ran"
    shutil.copytree(run["index"], folder)
    spoil(folder, marker)
    before = snapshot(folder)
    line = refused(capfd, ["search", "a red building", "--index", folder], folder)
    assert INDEX_CASES[spoil] in line
    assert snapshot(folder) == before and not marker.exists()


def test_search_names_a_damaged_checkpoint_behind_a_sound_index(run, tmp_path, capfd):
    folder = tmp_path / "index"
    shutil.copytree(run["index"], folder)
    assert main(["search", "a red building", "--index", str(folder)]) == 0  # the sound pair searches
    checkpoint = tmp_path / "best.pt"
    shutil.copy(run["run"] / "best.pt", checkpoint)
    edit_meta(lambda meta: meta["encoder"].update(checkpoint=str(checkpoint)))(folder, None)
    assert main(["search", "a red building", "--index", str(folder)]) == 0
    scribble(checkpoint)
    assert "corrupted" in refused(capfd, ["search", "a red building", "--index", folder], checkpoint)


def test_index_refuses_a_bad_checkpoint_and_writes_no_folder(run, tmp_path, capfd):
    checkpoint, marker, out = tmp_path / "best.pt", tmp_path / "code-ran", tmp_path / "index"
    malicious_zip(checkpoint, marker)
    refused(capfd, ["index", "--checkpoint", checkpoint, "--data", run["root"], "--version", "Synth",
                    "--out", out], checkpoint)
    assert not out.exists() and not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


# ----------------------------------------------------------------------------- feature caches
SHAPE = (6, 4, 3)


def sound(x=None):
    return torch.arange(72, dtype=torch.float16).reshape(SHAPE) if x is None else x


def cache_file(tmp_path: Path, tensors: dict | None = None, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "cache" / "image-0123.safetensors"
    path.parent.mkdir(exist_ok=True)
    if tensors is not None:
        save_file(tensors, str(path), metadata=metadata)
    return path


CACHE_CASES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-50]),
    "random bytes": lambda p: p.write_bytes(random.Random(4).randbytes(500)),
    "no x tensor": lambda p: cache_file(p.parents[1], {"y": sound()}),
    "wrong row count": lambda p: cache_file(p.parents[1], {"x": sound()[:5]}),
    "wrong width": lambda p: cache_file(p.parents[1], {"x": sound().reshape(6, 3, 4)}),
    "non-finite": lambda p: cache_file(p.parents[1], {"x": sound().index_fill(0, torch.tensor([2]), float("inf"))}),
    "checksum": lambda p: cache_file(p.parents[1], {"x": sound() + 1},
                                     {"sha256": checkpoints.payload_digest({"x": sound()})}),
}


@pytest.mark.parametrize("case", CACHE_CASES)
def test_a_bad_feature_cache_is_recomputed_never_used(tmp_path, caplog, case):
    """Decided: a cache is derived data, so an unsound file is a miss (one warning naming it),
    recomputed and replaced by a sound one; its contents are never used."""
    path = cache_file(tmp_path)
    made = []

    def make():
        made.append(1)
        return sound()

    assert torch.equal(cached._load_or_make(path, make, SHAPE), sound()) and made == [1]  # written
    CACHE_CASES[case](path)
    with caplog.at_level(logging.WARNING, logger="geotextloc.train.cached"):
        x = cached._load_or_make(path, make, SHAPE)
    assert torch.equal(x, sound()) and made == [1, 1]
    assert [r.getMessage().startswith(f"{path}: feature cache unusable") for r in caplog.records] == [True]
    assert torch.equal(cached._load_or_make(path, make, SHAPE), sound()) and made == [1, 1]  # replaced: a hit
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_an_unwritable_feature_cache_is_one_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match=r"file/x.safetensors: cannot write the feature cache"):
        cached._load_or_make(tmp_path / "file" / "x.safetensors", sound, SHAPE)


# ----------------------------------------------------------------------------- release files
def test_evaluate_names_a_bad_annotation_file(run, tmp_path, capfd):
    root = tmp_path / "release"
    shutil.copytree(run["root"], root)
    annotations = root / "CVG-text" / "Synth" / "test.json"
    annotations.write_text(annotations.read_text()[:-30])
    refused(capfd, ["evaluate", "--checkpoint", run["run"] / "best.pt", "--data", root, "--city", "Synth",
                    "--view", "osm", "--out", tmp_path / "eval"], annotations)
    assert not (tmp_path / "eval").exists()


RELEASE_CASES = {
    "truncated": lambda text: text[: len(text) // 2],
    "number too long": lambda text: '{"60.17,24.94_a.png": ' + "7" * 5000 + "}",
    "nested too deep": lambda text: "[" * 100_000 + "]" * 100_000,
    "not an object": lambda text: "[1, 2]",
    "description not a string": lambda text: json.dumps({k: 5 for k in json.loads(text)}),
    "bad coordinates": lambda text: json.dumps({"nan,nan_a.png": "a red building"}),
}


@pytest.mark.parametrize("case", RELEASE_CASES)
def test_release_reader_names_the_annotation_file(run, tmp_path, case):
    root = tmp_path / "release"
    shutil.copytree(run["root"], root)
    annotations = root / "CVG-text" / "Synth" / "train.json"
    annotations.write_text(RELEASE_CASES[case](annotations.read_text()))
    with pytest.raises(GeotextlocError) as caught:
        read_release(root, versions=["Synth"])
    assert str(annotations) in str(caught.value) and "\n" not in str(caught.value)


MANIFEST_CASES = {
    "truncated": lambda lines, row: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]],
    "not UTF-8": lambda lines, row: lines[:-1] + [b'{"name": "\xff\xfe"}'],
    "number too long": lambda lines, row: lines[:-1] + [b'{"name": "x", "lat": ' + b"1" * 5000 + b"}"],
    "latitude too large": lambda lines, row: lines[:-1] + [json.dumps({**row, "lat": 10**400}).encode()],
    "nested too deep": lambda lines, row: lines[:-1] + [b"[" * 100_000 + b"]" * 100_000],
    "no name": lambda lines, row: lines[:-1] + [json.dumps({k: v for k, v in row.items() if k != "name"}).encode()],
    "view not a path": lambda lines, row: lines[:-1] + [json.dumps({**row, "drone": 7}).encode()],
}


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_geoloc_reader_names_the_manifest_line(tmp_path, case):
    make_geoloc(tmp_path, n_train=3, n_test=2)
    manifest = tmp_path / "geoloc" / "Synth" / "train.jsonl"
    lines = manifest.read_bytes().splitlines()
    row = json.loads(lines[-1])
    manifest.write_bytes(b"\n".join(MANIFEST_CASES[case](lines, row)) + b"\n")
    with pytest.raises(GeotextlocError) as caught:
        read_geoloc(tmp_path)
    assert f"{manifest}:3" in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- a fresh process
def test_the_console_command_prints_one_line_in_a_fresh_process(run, tmp_path):
    """As a user runs it (``python -m geotextloc``): no warning, log line or traceback beside the
    error, whatever pytest would have captured in-process."""
    checkpoint, marker, out = tmp_path / "weights.pt", tmp_path / "code-ran", tmp_path / "run"
    checkpoint.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))  # torch warns on protocol 4
    shutil.copytree(run["run"], out)
    truncated(out / "last.pt", marker)
    folder = tmp_path / "index"
    shutil.copytree(run["index"], folder)
    scribbled_faiss(folder, marker)
    commands = {
        checkpoint: ["evaluate", "--checkpoint", checkpoint, "--data", run["root"], "--city", "Synth",
                     "--view", "osm", "--out", tmp_path / "eval"],
        out / "last.pt": ["train", "--config", run["config"], "--resume", f"out_dir={out}"],
        folder: ["search", "a red building", "--index", folder],
    }
    for name, argv in commands.items():
        done = subprocess.run([sys.executable, "-m", "geotextloc", *map(str, argv)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and str(name) in lines[0], done.stderr
    assert not marker.exists() and not (tmp_path / "eval").exists()
