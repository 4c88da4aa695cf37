"""Files that survive a kill or a full disk: write beside the file, fsync, then rename onto it.

Every file a run or a calibration writes whole goes through :func:`replacing` (append-only trace
files are appended line by line instead; see :mod:`fedenv.calibrate.traces`). A kill leaves the
old file or the new one, never a mixture; a failed write removes the temporary file and leaves
the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["TEMPORARY", "replacing", "write_file"]

#: Names of :func:`replacing`'s temporary files: ``.<name>.<pid>.tmp`` beside the file they replace.
TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike[str], hints: Mapping[int, str] | None = None
) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path in the same directory to write to, then
    fsync it and ``os.replace`` it onto ``path``.

    Writers that take a path (SB3's ``save`` methods, ``torch.save``) write to the temporary one::

        with replacing(run.model) as tmp:
            model.save(tmp)

    Args:
        path: the file to write.
        hints: what to tell the user per ``errno`` of a failed write (e.g. a full disk: the files
            saved before are intact, free space and resume); the message names ``path`` either way.

    Raises:
        OSError: with the errno of the failure and a message naming ``path`` (and the hint).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if (
            isinstance(err, OSError)
            and err.errno is not None
            and not str(err).startswith("cannot write")
        ):
            hint = (hints or {}).get(err.errno, "")
            raise OSError(
                err.errno, f"cannot write {path}: {err.strerror or err}. {hint}".rstrip()
            ) from err
        raise
    with contextlib.suppress(
        OSError
    ):  # the rename itself survives a power cut once the directory is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file(
    path: str | os.PathLike[str], data: str | bytes, hints: Mapping[int, str] | None = None
) -> None:
    """Write text or bytes to ``path`` atomically (:func:`replacing`)."""
    with replacing(path, hints) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
