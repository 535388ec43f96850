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
# Files later notebooks, RESULTS and readers rely on, per notebook (in the report folder).
WRITES = {
    "02_train_crosstext2loc": ["02_train_osm_interpolate_metrics.json", "figures/02_curves_osm_interpolate.png"],
    "03_evaluate_per_city": ["03_table1_R1.csv", "03_metrics_mean_std.csv", "03_runs.csv", "03_metrics.json",
                             "03_street_level.csv", "figures/03_per_city.png", "figures/03_street_level.png"],
    "04_ablation_epe": ["04_epe_ablation.csv", "04_epe_paired_difference.csv", "04_epe_sign_test.csv",
                        "04_text_source_ablation.csv", "figures/04_positional_tables.png"],
    "07_real_release": ["07_real_release_summary.json", "figures/07_materialized_Helsinki.png"],
    "08_query_modality": ["08_query_modality.csv", "08_query_modality_sign_test.csv", "08_baselines.csv",
                          "08_query_modality.json", "figures/08_query_modality.png", "figures/08_late_fusion_weight.png"],
    "09_dataset_creation": ["09_text_statistics.csv", "09_text_source_ablation.csv", "09_dataset_creation.json",
                            "figures/09_geoloc_steps.png", "figures/09_place0.jpg"],
}


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
    missing = [name for name in WRITES.get(notebook.stem, []) if not (tmp_path / name).is_file()]
    assert not missing, f"{notebook.name} did not write {missing}"
    if notebook.stem == "03_evaluate_per_city":  # Table 1 carries its reference rows
        models = (tmp_path / "03_table1_R1.csv").read_text()
        assert "\nchance," in models and "\nmap labels," in models
    if notebook.stem == "07_real_release":  # against the stand-ins: faults injected and retried, nothing twice
        summary = json.loads((tmp_path / "07_real_release_summary.json").read_text())
        assert summary["injected_429"] > 0 and summary["injected_500"] > 0
        assert summary["rerun_requests"] == summary["served_twice"] == 0
        assert summary["round_trip_equal"] == summary["records"] > 0
    if notebook.stem == "04_ablation_epe":  # every variant against truncate, seeds pooled
        sign = (tmp_path / "04_epe_sign_test.csv").read_text()
        assert sign.splitlines()[0] == ("variant,queries,metric,n,variant (%),truncate (%),difference,"
                                        "variant better,truncate better,p (sign test)")
        assert all(f"\n{v},all queries,R@1," in sign for v in ("interpolate", "kps", "random", "native"))
