"""Path arguments, checked before any work: one ``UserError`` line naming the argument.

    input_file     an existing regular file (or a symlink to one); a FIFO would block open()
    output_file    its folder exists; absent, or a regular file (replaced atomically)
    output_folder  a folder, or absent (it will be created)

A device, FIFO or folder where a file is expected is named as such and never opened or replaced.
"""

from __future__ import annotations

import os
import stat
from typing import Callable

from .._errors import UserError

__all__ = ["input_file", "output_file", "output_folder"]


def _kind(mode: int) -> str:
    from ..gguf.file import file_kind

    return file_kind(mode)


def _stat(path: str, refusal: Callable[[str], str]) -> os.stat_result | None:
    """``os.stat(path)``, or None when nothing is there; any other OSError (EACCES, ENOTDIR ...)
    is the UserError ``refusal(strerror)``."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(refusal(e.strerror or str(e))) from None


def input_file(path: str, arg: str) -> str:
    """``path`` (argument ``arg``) must be an existing regular file, or a symlink to one."""
    st = _stat(path, lambda why: f"{arg}: cannot read {path!r}: {why}")
    if st is None:
        raise UserError(f"{arg}: no such file {path!r}")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{arg}: {path!r} is {_kind(st.st_mode)}, expected a regular file")
    return path


def output_file(path: str, arg: str) -> str:
    """``path`` may be written (atomically): its folder exists, and it is absent or a regular file."""
    folder = os.path.dirname(os.path.abspath(path))
    cannot_write = lambda why: f"{arg}: cannot write {path!r}: {why}"  # noqa: E731
    st = _stat(folder, cannot_write)
    if st is None:
        raise UserError(f"{arg}: no such folder {folder!r} (for {path!r})")
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{arg}: cannot write {path!r}: {folder!r} is {_kind(st.st_mode)}, not a folder")
    st = _stat(path, cannot_write)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"{arg}: {path!r} is {_kind(st.st_mode)}; refusing to replace it with a file")
    return path


def output_folder(path: str, arg: str) -> str:
    """``path`` is a folder, or absent (it will be created); anything else is refused."""
    st = _stat(path, lambda why: f"{arg}: cannot write into {path!r} ({why})")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{arg}: {path!r} is {_kind(st.st_mode)}, expected a folder")
    return path
