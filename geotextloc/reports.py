"""Execute the tutorial notebooks with papermill into ``reports/``, with provenance.

``geotextloc report notebooks/00_quickstart.ipynb --profile tiny`` writes
``reports/00_quickstart.ipynb`` (executed), ``reports/00_quickstart.html`` and
``reports/00_quickstart.provenance.json``. Provenance (git commit, package versions,
parameters, data fingerprint) is also the first cell of the executed notebook, so the
HTML shows it. A report that would contain the value of a secret from the environment
(API keys, Hub tokens) is refused and deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from geotextloc.config import PROFILES
from geotextloc.errors import GeotextlocError
from geotextloc.files import atomic_write_text

PACKAGES = ("geotextloc", "torch", "open_clip_torch", "datasets", "faiss-cpu", "numpy", "pandas", "papermill")
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def git_commit(cwd: Path | None = None) -> str:
    """HEAD's commit, suffixed ``+dirty`` when tracked files differ; ``unknown`` outside git.

    Files under ``reports/`` do not count: executing the reports rewrites them."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                 if not line.split(maxsplit=1)[-1].startswith("reports/")]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_fingerprint(path: str | Path) -> str:
    """SHA-256 over every file's relative path, size and (for text/JSON files) content.

    Images are fingerprinted by path and size only, so fingerprinting a 30,000-tile release
    takes seconds; annotation files, manifests and cards are hashed in full. Hidden files (a
    build's stamps such as ``.built-v4``) are not data and are left out.
    """
    root = Path(path)
    if not root.exists():
        return "missing"
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = file.relative_to(root).as_posix()
        digest.update(f"{rel}\0{file.stat().st_size}\0".encode())
        if file.suffix in {".json", ".jsonl", ".md", ".yaml", ".csv"}:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _secret_values() -> list[str]:
    return [
        value
        for name, value in os.environ.items()
        if any(m in name.upper() for m in SECRET_MARKERS) and len(value) >= 8
    ]


def _provenance_markdown(prov: dict[str, Any]) -> str:
    params = ", ".join(f"`{k}={v!r}`" for k, v in prov["parameters"].items())
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    return (
        "**Provenance** (written by `geotextloc report`)\n\n"
        f"- executed: {prov['executed_at']} on {prov['machine']}\n"
        f"- git commit: `{prov['git_commit']}`\n"
        f"- parameters: {params}\n"
        f"- data: `{prov['data_dir']}` fingerprint `{prov['data_fingerprint']}`\n"
        f"- versions: {versions}\n"
    )


def run_notebook(
    notebook: str | Path,
    profile: str = "tiny",
    out_dir: str | Path = "reports",
    data_dir: str | Path | None = None,
    device: str = "cpu",
    parameters: dict[str, Any] | None = None,
    html: bool = True,
    timeout: int | None = None,
) -> Path:
    """Execute ``notebook`` with papermill; return the executed notebook's path."""
    import nbformat
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise GeotextlocError(f"{notebook}: notebook not found; see notebooks/ for the available ones")
    if profile not in PROFILES:
        raise GeotextlocError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir else Path("data") / ("embedded-smoke" if profile == "smoke" else "embedded")
    params = {
        "profile": profile,
        "data_dir": str(data_dir),
        "device": device,
        "report_dir": str(out_dir),
        **(parameters or {}),
    }
    executed = out_dir / notebook.name
    partial = out_dir / f".{notebook.stem}.running.ipynb"
    try:
        papermill.execute_notebook(
            str(notebook),
            str(partial),
            parameters=params,
            kernel_name="python3",
            language="python",
            cwd=str(Path.cwd()),
            progress_bar=False,
            execution_timeout=timeout,
        )
    except papermill.PapermillExecutionError as err:
        raise GeotextlocError(
            f"{notebook}: cell {err.exec_count} failed with {err.ename}: {err.evalue}; "
            f"the partly executed notebook is {partial}"
        ) from None

    prov = {
        "notebook": str(notebook),
        "executed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node() or 'host'} ({platform.machine()}, {os.cpu_count()} cores, {platform.system()})",
        "git_commit": git_commit(),
        "parameters": params,
        "data_dir": str(data_dir),
        "data_fingerprint": data_fingerprint(data_dir),
        "versions": package_versions(),
    }
    nb = nbformat.read(partial, as_version=4)
    nb.metadata["geotextloc"] = {"provenance": prov}
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(_provenance_markdown(prov)))
    text = nbformat.writes(nb)
    leaked = [v for v in _secret_values() if v in text]
    if leaked:
        partial.unlink(missing_ok=True)
        raise GeotextlocError(
            f"{notebook}: the executed notebook contains the value of a secret environment variable; "
            "nothing was written — remove the print/log of that secret"
        )
    atomic_write_text(executed, text)
    partial.unlink(missing_ok=True)
    atomic_write_text(out_dir / f"{notebook.stem}.provenance.json", json.dumps(prov, indent=2, sort_keys=True) + "\n")
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nb)
        atomic_write_text(out_dir / f"{notebook.stem}.html", body)
    return executed


def _report(args: argparse.Namespace) -> int:
    from geotextloc.config import parse_overrides

    extra = parse_overrides(args.param)
    for notebook in args.notebooks:
        print(f"executing {notebook} (profile {args.profile}) ...", file=sys.stderr, flush=True)
        out = run_notebook(
            notebook, args.profile, args.out_dir, args.data_dir, args.device, extra, html=not args.no_html
        )
        print(out)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="execute notebooks with papermill into reports/ (ipynb + HTML + provenance)"
    )
    parser.add_argument("notebooks", nargs="+", help="notebooks/*.ipynb to execute")
    parser.add_argument("--profile", choices=PROFILES, default="tiny")
    parser.add_argument("--out-dir", default="reports", help="where the executed copies go (default reports/)")
    parser.add_argument("--data-dir", default=None, help="dataset root (default data/embedded, or data/embedded-smoke)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="extra notebook parameter (repeatable)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.set_defaults(func=_report)
