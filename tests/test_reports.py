"""The notebook runner: papermill execution, provenance, HTML, secret refusal, failures."""

import json
import subprocess
import sys

import nbformat
import pytest

from geotextloc.errors import GeotextlocError
from geotextloc.reports import data_fingerprint, run_notebook


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\ndata_dir = "x"\ndevice = "cpu"\nreport_dir = "reports"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)
    return path


def test_report_executes_with_parameters_and_records_provenance(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text('{"a": "b"}')
    nb = _notebook(tmp_path / "demo.ipynb", "print('profile is', profile, 'data', data_dir)")
    out = run_notebook(nb, profile="smoke", out_dir=tmp_path / "reports", data_dir=data)

    executed = nbformat.read(out, as_version=4)
    outputs = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"profile is smoke data {data}" in outputs
    prov = json.loads((tmp_path / "reports" / "demo.provenance.json").read_text())
    assert prov["parameters"]["profile"] == "smoke"
    assert prov["data_fingerprint"] == data_fingerprint(data)
    assert "torch" in prov["versions"] and prov["git_commit"]
    assert executed.cells[0].cell_type == "markdown" and "Provenance" in executed.cells[0].source
    assert "Provenance" in (tmp_path / "reports" / "demo.html").read_text()


def test_data_fingerprint_changes_with_annotations(tmp_path):
    (tmp_path / "test.json").write_text('{"a": "one"}')
    before = data_fingerprint(tmp_path)
    (tmp_path / "test.json").write_text('{"a": "two"}')
    assert data_fingerprint(tmp_path) != before


def test_a_builds_stamps_do_not_change_the_data_fingerprint(tmp_path):
    """A fresh `make data` writes .built-v4/.dense-v4 beside the same files: the same build."""
    (tmp_path / "CVG-text").mkdir()
    (tmp_path / "CVG-text" / "test.json").write_text('{"a": "one"}')
    before = data_fingerprint(tmp_path)
    (tmp_path / ".built-v4").touch()
    assert data_fingerprint(tmp_path) == before
    (tmp_path / "CVG-text" / "extra.png").write_bytes(b"x")
    assert data_fingerprint(tmp_path) != before


def test_report_refuses_to_write_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_API_KEY", "sk-test-0123456789abcdef")
    nb = _notebook(tmp_path / "leak.ipynb", "import os; print(os.environ['DEMO_API_KEY'])")
    with pytest.raises(GeotextlocError, match="secret"):
        run_notebook(nb, profile="smoke", out_dir=tmp_path / "reports", html=False)
    leftovers = [p.name for p in (tmp_path / "reports").iterdir()]
    assert not any("sk-test" in p.read_text() for p in (tmp_path / "reports").iterdir()), leftovers
    assert "leak.ipynb" not in leftovers


def test_failing_cell_gives_one_line_error_from_the_cli(tmp_path):
    nb = _notebook(tmp_path / "bad.ipynb", "raise ValueError('boom')")
    proc = subprocess.run(
        [sys.executable, "-m", "geotextloc", "report", str(nb), "--profile", "smoke",
         "--out-dir", str(tmp_path / "r"), "--no-html"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "ValueError: boom" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "bad.ipynb").exists()


def test_git_commit_is_dirty_for_code_changes_but_not_for_the_reports_it_writes(tmp_path):
    import subprocess

    from geotextloc.reports import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "00.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    assert not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "reports" / "00.csv").write_text("b\n")
    assert not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path).endswith("+dirty")
