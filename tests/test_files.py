"""Atomic writes (geotextloc.files): whole files only, and the mode open() would give."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from geotextloc import files

WRITE_ALL = """
import importlib.util, json, os, sys
os.umask(int(sys.argv[2], 8))  # before the module reads the umask
from pathlib import Path
spec = importlib.util.spec_from_file_location("files", sys.argv[3])  # not geotextloc.eval's heavy __init__
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
root = Path(sys.argv[1])
files.atomic_write_text(root / "a.txt", "text")
files.atomic_write_bytes(root / "b.bin", b"bytes")
with files.atomic_path(root / "c.csv") as tmp:
    tmp.write_text("x,y")
files.atomic_link(root / "b.bin", root / "d.bin")
with files.atomic_dir(root / "folder") as tmp:
    (tmp / "inside.txt").write_text("in")
print(json.dumps({p.name: os.stat(p).st_mode & 0o777 for p in root.rglob("*")}))
"""


@pytest.mark.parametrize("umask, file_mode, dir_mode", [("022", 0o644, 0o755), ("027", 0o640, 0o750)])
def test_written_files_are_readable_as_the_umask_allows(tmp_path, umask, file_mode, dir_mode):
    """mkstemp alone would leave 0600 (and mkdtemp 0700): others could not read the dataset."""
    out = subprocess.run([sys.executable, "-c", WRITE_ALL, str(tmp_path), umask, files.__file__],
                         capture_output=True, text=True, check=True)
    modes = json.loads(out.stdout)
    assert modes == {"a.txt": file_mode, "b.bin": file_mode, "c.csv": file_mode, "d.bin": file_mode,
                     "folder": dir_mode, "inside.txt": file_mode}
    if umask == "022":
        assert all(m & stat.S_IRGRP and m & stat.S_IROTH for m in modes.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.csv", "d.bin", "folder"]


def test_umask_is_read_without_changing_it():
    before = os.umask(0o022)
    os.umask(before)
    assert files._read_umask() == before == files.UMASK
    assert files.FILE_MODE == 0o666 & ~before and files.DIR_MODE == 0o777 & ~before


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    files.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(RuntimeError):
        with files.atomic_dir(tmp_path / "hf") as tmp:
            (tmp / "x").write_text("x")
            raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    files.atomic_write_bytes(target, b"new")
    assert Path(target).read_bytes() == b"new"
