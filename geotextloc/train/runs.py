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

import pandas as pd

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
    """The ``best.pt`` under ``root`` of a CrossText2Loc run of ``view`` (text queries) trained on
    ``data_dir`` that is most like CrossText2Loc proper, or None: EPE by interpolation first, then a run from
    pretrained weights, full texts, finished (``done.json``), covering most of ``regions``, the
    lowest seed, the newest. Folders named ``skip`` are left out."""
    data_dir = Path(data_dir).resolve()
    found = []
    for path in Path(root).glob("**/best.pt"):
        if skip in path.parts:
            continue
        cfg = checkpoint_config(path)
        if cfg.get("task", "crosstext2loc") != "crosstext2loc" or cfg.get("view") != view \
                or cfg.get("query", "text") != "text" or Path(str(cfg.get("data_root", ""))).resolve() != data_dir:
            continue
        covered = {v.removesuffix("-photos").removesuffix("-mixed") for v in cfg.get("versions", [])}
        found.append((cfg.get("epe") == "interpolate", cfg.get("pretrained") is not None,
                      "direct" not in str(path.parent), (path.parent / "done.json").exists(),
                      len(covered & set(regions)), -int(cfg.get("seed", 0)), path.stat().st_mtime, str(path)))
    return Path(max(found)[-1]) if found else None


def loss_and_recall_curves(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, eval rows) of a run's ``metrics.jsonl``.

    Eval rows (``epoch`` counted from 1) hold the selection split's R@1/5/10 and L@50, the split
    (``val``: carved from the training places; ``test``: runs without ``val_share``) and its score.
    """
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train = pd.DataFrame([r for r in rows if r["kind"] == "train"])
    evals = pd.DataFrame([{"epoch": r["epoch"] + 1, "step": r["step"], "split": r.get("split", "test"),
                           "score": r.get("score", r["overall"]["R@1"]),
                           **{k: r["overall"][k] for k in ("R@1", "R@5", "R@10", "L@50")}}
                          for r in rows if r["kind"] == "eval"],
                         columns=["epoch", "step", "split", "score", "R@1", "R@5", "R@10", "L@50"])
    return train, evals


def given_or_best(given: str | Path | None, root: str | Path, view: str, data_dir: str | Path, regions=()):
    """``given`` when it is a checkpoint of ``view`` (a bare state dict, whose view is unknown,
    counts as any view), else :func:`best_checkpoint` under ``root`` (None when there is none).
    A ``given`` path that does not exist is said in one line and passed over."""
    if given and not Path(given).is_file():
        print(f"checkpoint {str(given)!r} not found: looking under {root}/ instead")
    elif given and checkpoint_config(given).get("view", view) == view:
        return Path(given)
    return best_checkpoint(root, view, data_dir, regions)
