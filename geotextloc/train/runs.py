"""One run of a config, trained once and reused: what the notebooks' ablations (GeoBridge's
modes and missing views) call for every (setting, seed).

A run folder holds ``identity.json`` (the resolved config and the data's fingerprint) and,
when finished, ``result.json`` (that identity and the final evaluation row). A call with the
same identity returns the saved row without training; another identity starts the folder
afresh; an interrupted run resumes from its ``last.pt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

from geotextloc.files import atomic_write_text


def manifest_fingerprint(root: str | Path) -> str:
    """sha256 (16 hex) over the GeoLoc manifest files under ``root`` (their paths and bytes)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted((root / "geoloc").rglob("*.jsonl")):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def train_or_reuse(cfg, fingerprint: str, keep_weights: bool = False, progress: bool = False) -> dict:
    """The final evaluation row of the run ``cfg`` (its ``out_dir``) on data ``fingerprint``:
    read back if that exact run finished before, else trained (or resumed) now. The weights are
    deleted afterwards unless ``keep_weights`` (metrics and per-query tables stay)."""
    from geotextloc.train.loop import read_metrics, train

    out = Path(cfg.out_dir)
    identity = {**cfg.to_dict(), "data": fingerprint}
    result = out / "result.json"
    if result.exists() and json.loads(result.read_text())["identity"] == identity:
        return json.loads(result.read_text())["eval"]
    saved = out / "identity.json"
    if out.exists() and (json.loads(saved.read_text()) if saved.exists() else {}) != identity:
        shutil.rmtree(out)  # another setting or other data: start afresh
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(identity))
    start = time.time()
    with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
        from geotextloc.train.config import from_dict

        train(from_dict({**cfg.to_dict(), "resume": True}))
    final = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"][-1]
    print(f"{out.name}: {cfg.epochs} epochs in {time.time() - start:.0f} s, score {final['score']:.2f}")
    atomic_write_text(result, json.dumps({"identity": identity, "eval": final}))
    if not keep_weights:
        for checkpoint in out.glob("*.pt"):
            checkpoint.unlink()
    return final


def checkpoint_config(path: str | Path) -> dict:
    """The training config saved in checkpoint ``path`` ({} for a file without one)."""
    from geotextloc.models.checkpoints import read_checkpoint

    obj = read_checkpoint(path)
    return obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}


def best_checkpoint(root: str | Path, view: str, data_dir: str | Path, regions=(), skip: str = "erm_quick"):
    """The ``best.pt`` under ``root`` of a CrossText2Loc run of ``view`` trained on ``data_dir``
    that is most like CrossText2Loc proper, or None: EPE by interpolation first, then a run from
    pretrained weights, full texts, finished (``done.json``), covering most of ``regions``, the
    lowest seed, the newest. Folders named ``skip`` are left out."""
    data_dir = Path(data_dir).resolve()
    found = []
    for path in Path(root).glob("**/best.pt"):
        if skip in path.parts:
            continue
        cfg = checkpoint_config(path)
        if cfg.get("task", "crosstext2loc") != "crosstext2loc" or cfg.get("view") != view \
                or Path(str(cfg.get("data_root", ""))).resolve() != data_dir:
            continue
        covered = {v.removesuffix("-photos").removesuffix("-mixed") for v in cfg.get("versions", [])}
        found.append((cfg.get("epe") == "interpolate", cfg.get("pretrained") is not None,
                      "direct" not in str(path.parent), (path.parent / "done.json").exists(),
                      len(covered & set(regions)), -int(cfg.get("seed", 0)), path.stat().st_mtime, str(path)))
    return Path(max(found)[-1]) if found else None
