"""Files whole or not at all: a full disk mid-write leaves the old file (or none) under the final name, and no
temporary file; ``replace=False`` never replaces, with or without hard links."""

from __future__ import annotations

import errno
import os

import pytest

from nag_guidance import files


def full_disk(file) -> None:
    file.write(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("existing", [None, b"the old file"])
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, replace, existing):
    path = tmp_path / "manifest.jsonl"
    if existing is not None:
        path.write_bytes(existing)
    with pytest.raises(OSError, match="No space left") as info:
        files.write_atomically(path, full_disk, replace=replace)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert (path.read_bytes() if path.exists() else None) == existing
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if existing is None else ["manifest.jsonl"])


def test_replace_false_never_replaces(tmp_path):
    path = tmp_path / "a.png"
    assert files.write_atomically(path, lambda file: file.write(b"first"), replace=False)
    assert not files.write_atomically(path, lambda file: file.write(b"second"), replace=False)
    assert files.write_atomically(path, lambda file: file.write(b"third"))
    assert path.read_bytes() == b"third" and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_without_hard_links_the_name_is_still_taken_once(tmp_path, monkeypatch):
    def no_links(source, target):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "a.png"
    assert files.write_atomically(path, lambda file: file.write(b"first"), replace=False)
    assert not files.write_atomically(path, lambda file: file.write(b"second"), replace=False)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
