"""Every tutorial notebook executes top to bottom under papermill in the smoke profile.

This is what CI runs for the notebooks; the tiny-profile executions are committed under
reports/ by `make reports`. The smoke dataset is the embedded builder's output at the sizes
of configs/smoke/embedded.yaml, built once per test session.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from geotextloc.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    cfg = load_config(ROOT / "configs" / "smoke" / "embedded.yaml")
    out = tmp_path_factory.mktemp("embedded-smoke")
    cmd = [sys.executable, "-m", "geotextloc", "data", "build-embedded", "--out", str(out),
           "--regions", ",".join(cfg["regions"]), "--max-locations", str(cfg["max_locations"]),
           "--size", str(cfg["size"]), "--pano-width", str(cfg["pano_width"]),
           "--seed", str(cfg["seed"]), "--workers", "1"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    dense = [sys.executable, "-m", "geotextloc", "data", "densify", "--out", str(out),
             "--spacing", str(cfg["dense_spacing"]), "--max-places", str(cfg["dense_max_places"])]
    subprocess.run(dense, check=True, cwd=ROOT, capture_output=True)
    return out


def test_notebooks_exist_with_parameters_and_no_outputs():
    assert NOTEBOOKS, "no notebooks in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        for name in ("profile", "data_dir", "device", "report_dir"):
            assert f"{name} =" in tagged[0].source, f"{path.name}: parameter {name} missing"
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: strip outputs"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_profile(notebook, smoke_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "geotextloc", "report", str(notebook), "--profile", "smoke",
         "--data-dir", str(smoke_data), "--out-dir", str(tmp_path), "--no-html"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = nbformat.read(tmp_path / notebook.name, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    prov = json.loads((tmp_path / f"{notebook.stem}.provenance.json").read_text())
    assert prov["parameters"]["profile"] == "smoke"
