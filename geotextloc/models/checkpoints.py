"""Released CrossText2Loc weights -> open_clip models, with every key and shape checked.

The released CrossText2Loc state dicts are OpenAI-CLIP ViT-L/14@336 state dicts
(``positional_embedding``, ``token_embedding.weight``, ``transformer.resblocks.*``,
``visual.*``, ``text_projection``, ``logit_scale``) whose text positional table has 300 rows
(EPE). open_clip's ``CLIP`` uses the same key names, so loading is a strict
``load_state_dict`` after unwrapping, provided the model was built with 300 text positions
(``factory.create(..., context_length=300)``). open_clip's own ``load_checkpoint`` would
silently interpolate a 300-row table back to the model's 77; we refuse instead.

Our training checkpoints carry a checksum (:func:`save_checkpoint`): the sha256 of every
tensor's name, dtype, shape and bytes and of every other value, verified by
:func:`read_checkpoint`, which also refuses NaN/inf in any floating tensor (all that can be
checked in released weights, which have no checksum). Hashing runs at sha256's speed on one
core: 0.1-0.2 s per 100 MB of tensors, about what ``torch.save`` takes to write them.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from geotextloc.errors import DataError
from geotextloc.files import atomic_path

TEXT_POSITIONS = ("positional_embedding", "text.positional_embedding")
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI files
CHECKSUM = "checksum"  # our checkpoints' digest entry: "sha256:<hex>" of everything else in the file
REFETCH = "re-download it or retrain"


def payload_digest(obj) -> str:
    """sha256 of a checkpoint's contents, in a fixed order.

    Each tensor contributes its name (the path of keys to it), dtype, shape and bytes; every
    other value its name, type and ``repr``. Mappings are walked in sorted key order, lists
    and tuples in order, so the digest of what ``torch.save`` wrote equals that of what
    ``torch.load`` reads back. CPU tensors are hashed in place, without a copy.
    """
    h = hashlib.sha256()
    _feed(h, "", obj)
    return h.hexdigest()


def _feed(h, name: str, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|tensor|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        h.update(f"{name}|map|{len(value)}\n".encode())
        for key in sorted(value, key=repr):
            _feed(h, f"{name}/{key!r}", value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{name}|seq|{len(value)}\n".encode())
        for i, item in enumerate(value):
            _feed(h, f"{name}/{i}", item)
    else:
        h.update(f"{name}|{type(value).__name__}|{value!r}\n".encode())


def _non_finite(name: str, value) -> str | None:
    """The name of the first floating tensor in ``value`` holding NaN or +-inf, else None."""
    if isinstance(value, torch.Tensor):
        finite = not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
        return None if finite else name or "the tensor"
    if isinstance(value, Mapping):
        items = value.items()
    else:
        items = enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(f"{name}.{key}" if name else str(key), item)
        if found:
            return found
    return None


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """``torch.save(obj)`` plus its :func:`payload_digest` under ``CHECKSUM``, via a temp file
    and a rename (never a half-written file); :func:`read_checkpoint` verifies it."""
    with atomic_path(path) as tmp:
        torch.save({**obj, CHECKSUM: f"sha256:{payload_digest(obj)}"}, tmp)


def read_checkpoint(path: str | Path, fix: str = REFETCH):
    """``torch.load(path, weights_only=True)`` on the CPU, checked; DataError (one line naming
    the file, ending in ``fix``) if it is missing, unreadable, not weights-only, does not match
    the checksum saved with it, or holds NaN/inf in a floating tensor.

    Files without a checksum (released weights, older runs) are read unverified but for that
    last check. The returned object no longer holds the checksum entry.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found; pass an existing .pt/.pth file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):
            raise DataError(f"{path}: refused unread: it holds Python objects other than tensors and plain "
                            f"values (loading them could run code); {fix}") from None
        raise DataError(f"{path}: not a readable weights-only checkpoint (not a .pt file, or damaged); {fix}") from None
    except Exception as err:  # zip errors, TorchScript archives, truncated or empty files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise DataError(f"{path}: not a readable weights-only checkpoint ({first[:120]}); {fix}") from None
    try:
        if isinstance(obj, dict) and isinstance(obj.get(CHECKSUM), str):
            saved = obj.pop(CHECKSUM)
            if saved != f"sha256:{payload_digest(obj)}":
                raise DataError(f"{path}: corrupted: its tensors do not match the checksum saved with it; {fix}")
        bad = _non_finite("", obj)
    except (RuntimeError, TypeError, ValueError, RecursionError):  # tensors of odd layouts, absurd nesting
        raise DataError(f"{path}: not a readable weights-only checkpoint (tensors of an unknown kind); {fix}") from None
    if bad:
        raise DataError(f"{path}: tensor {bad!r} holds NaN or infinite values (damaged file or diverged run); {fix}")
    return obj


MODEL_CONFIG = {"model": str, "context_length": int, "epe": str}  # what rebuilds a checkpoint's model


def saved_config(obj, path: str | Path) -> dict | None:
    """The training config inside one of our checkpoints (``obj``, read from ``path``), its
    model entries checked (``model``, ``context_length``, ``epe``; ``image_size`` int or absent);
    None for a file without one (a bare state dict)."""
    if not isinstance(obj, dict) or "config" not in obj:
        return None
    config = obj["config"]
    if not isinstance(config, dict):
        raise DataError(f"{path}: its 'config' is a {type(config).__name__}, not a mapping; {REFETCH}")
    checks = {**MODEL_CONFIG, "image_size": (int, type(None))}
    for key, kind in checks.items():
        value = config.get(key)
        if (key in MODEL_CONFIG and key not in config) or not isinstance(value, kind) or isinstance(value, bool) \
                or (isinstance(value, int) and value < 1):
            what = "no" if key not in config else f"a bad ({value!r:.40})"
            raise DataError(f"{path}: its config has {what} {key!r}, so its model cannot be rebuilt; {REFETCH}")
    return config


def read_state_dict(path: str | Path, obj=None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (or of ``obj``, already read from it).

    Accepts a bare state dict, ``{"state_dict": ...}`` or ``{"model": ...}`` (our training
    checkpoints); strips a DDP ``module.`` prefix and OpenAI's non-tensor extras.
    """
    obj = read_checkpoint(path) if obj is None else obj
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}; "
                        "pass released weights or one of our best.pt/last.pt")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRAS}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: entry {bad[0]!r} is not a tensor; expected a state dict "
                        "(pass released weights or one of our best.pt/last.pt)")
    return state


def text_positions(state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the text positional table in a state dict (None if it has none)."""
    for key in TEXT_POSITIONS:
        if key in state:
            return int(state[key].shape[0])
    return None


def load_official(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a CrossText2Loc / OpenAI-format state dict into ``model`` in place, strictly.

    Raises DataError naming the file and the first missing, unexpected or mis-shaped key.
    """
    return load_state(model, read_state_dict(path), path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    """Strict, shape-checked ``load_state_dict`` of ``state`` (read from ``path``) into ``model``."""
    expected = model.state_dict()
    if hasattr(model, "text") and "positional_embedding" in state:  # OpenAI keys -> CustomTextCLIP
        state = {(f"text.{k}" if k.split(".")[0] in _TEXT_ROOTS else k): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        which = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        more = len(missing) + len(unexpected) - 1
        raise DataError(
            f"{path}: {which}{f' (and {more} more)' if more else ''}; "
            "the file does not match this model architecture (check the model name)"
        )
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape and got.numel() == want.numel() == 1:  # logit_scale () vs (1,)
            state[key] = got = got.reshape(want.shape)
        if got.shape != want.shape:
            hint = (
                f"; build the model with context_length={got.shape[0]}"
                if key in TEXT_POSITIONS
                else "; check the model name and image size"
            )
            raise DataError(
                f"{path}: key {key!r} has shape {tuple(got.shape)} but the model expects "
                f"{tuple(want.shape)}{hint}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model


_TEXT_ROOTS = {"positional_embedding", "token_embedding", "transformer", "ln_final", "text_projection"}
