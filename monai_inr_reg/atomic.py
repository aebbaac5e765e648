"""The one way this package writes a file: to a unique temporary name beside it, then ``os.replace``.

A reader (or a concurrent writer, a resumed run, a crash) never sees a half-written file: the
final name appears complete or not at all. The temporary name starts with ``.partial-`` and ends
with the final name, so writers that pick a format from the suffix (nibabel, ITK) still do.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text", "PARTIAL_PREFIX"]

PARTIAL_PREFIX = ".partial-"


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The parent folder is created. On an error the temporary file (or folder) is removed and
    ``path`` is left as it was. A folder works too (write its files, then it is renamed whole;
    an existing folder at ``path`` is replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
