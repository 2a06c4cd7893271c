"""Atomic writes honour the user's umask (colleagues can read shared results) and leave nothing half-written."""
import os
import stat

import pytest

from mindvis.utils.io import atomic_dir, atomic_write_text


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        f = atomic_write_text(tmp_path / "a.txt", "x")
        d = atomic_dir(tmp_path / "folder", lambda tmp: (tmp / "inner.txt").write_text("y"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == file_mode and stat.S_IMODE(d.stat().st_mode) == dir_mode
    assert (d / "inner.txt").read_text() == "y" and not list(tmp_path.glob(".*tmp"))


def test_a_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("killed")

    from mindvis.utils.io import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", boom)
    assert (tmp_path / "a.txt").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
