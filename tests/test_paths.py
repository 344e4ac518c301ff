"""utils/paths.py: run-folder numbering and atomic writes of the files a resume reads."""

from __future__ import annotations

import os
import pickle

import pytest

from utils.paths import increment_path, write_atomic


def test_increment_path_numbers_run_folders(tmp_path):
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp2"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"


def test_write_atomic_writes_text_and_bytes_and_a_failed_write_keeps_the_old_file(tmp_path):
    opt = write_atomic(tmp_path / "opt.yaml", "epochs: 3\nname: café\n")
    assert opt.read_text(encoding="utf-8") == "epochs: 3\nname: café\n"
    cache = write_atomic(tmp_path / "train.cache", pickle.dumps({"version": 1}))
    assert pickle.loads(cache.read_bytes()) == {"version": 1}
    with pytest.raises(TypeError):
        write_atomic(opt, 12)  # neither text nor bytes: fails while writing the temporary file
    assert opt.read_text(encoding="utf-8").startswith("epochs: 3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.yaml", "train.cache"]  # no temporary file left


def test_write_atomic_files_are_not_private(tmp_path):
    umask = os.umask(0o027)
    try:
        path = write_atomic(tmp_path / "train.cache", b"shared dataset")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600


def test_a_write_that_cannot_start_names_the_file_not_its_temporary(tmp_path):
    with pytest.raises(OSError) as e:
        write_atomic(tmp_path / "missing" / "opt.yaml", "a: 1")
    assert e.value.filename == str(tmp_path / "missing" / "opt.yaml") and ".tmp" not in str(e.value)
