"""Files written whole or not at all: a full disk or a crash in the middle of a write must never leave a truncated
file under its final name (a truncated PNG looks like a result, a truncated manifest loses records). Each file is
written to a hidden temporary name in its own folder, then renamed into place; a failed write removes it."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from PIL import Image, PngImagePlugin

NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)
"""What ``os.link`` raises where the filesystem has no hard links (FAT, exFAT, some network shares)."""


def write_atomically(path: Path, write: Callable[[BinaryIO], object], replace: bool = True) -> bool:
    """Write ``path`` with ``write(file)``; returns whether it was written. ``replace=False`` never replaces an
    existing file (two writers never get one name): it returns False instead. An ``OSError`` (e.g. ``ENOSPC``)
    leaves ``path`` as it was, carries ``path`` as its filename, and leaves no temporary file behind."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with temporary.open("xb") as file:
            write(file)
        if replace:
            os.replace(temporary, path)
            return True
        return _link(temporary, path)
    except OSError as error:
        if error.filename is None:  # a write through a file object names no file
            error.filename = str(path)
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """``path.write_text(text, encoding="utf-8")``, whole or not at all."""
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def save_png(image: Image.Image, path: Path, info: PngImagePlugin.PngInfo | None = None, replace: bool = True) -> bool:
    """Write ``image`` as a PNG (with text chunks ``info``) at ``path``, whole or not at all."""
    return write_atomically(path, lambda file: image.save(file, format="PNG", pnginfo=info), replace=replace)


def _link(temporary: Path, path: Path) -> bool:
    """Give the written file the name ``path`` unless that exists (a hard link is atomic and never replaces)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        try:  # no hard links: take the name with an empty file, then put the written one in its place
            path.open("xb").close()
        except FileExistsError:
            return False
        os.replace(temporary, path)
    return True
