"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Engines, their manifests, timing caches and result files are written on stations
that lose power or get killed by systemd. A plain ``open(path, "wb")`` that dies
half-way leaves a truncated file under the final name, and a truncated engine can
crash TensorRT on the next start. So every write goes to a temporary file in the
*same* directory (``os.replace`` is only atomic within one file system), is
flushed and fsynced, renamed over the final name, and then the directory itself
is fsynced so that the rename survives a power cut.

A writer killed with SIGKILL cannot clean up its temporary file; the file name
carries the writer's pid so that :func:`remove_stale_temporaries` can later
remove leftovers whose writer is gone, without touching a live writer's file.

What to call:

==============================  ==============================================================
``atomic_write_bytes``          bytes already in memory
``atomic_write_text``           a str (UTF-8 unless told otherwise)
``atomic_write_json``           a JSON document (indented, key-sorted by default; options)
``atomic_writer``               a binary file object, for data produced in pieces
``atomic_path``                 a temporary *path*, for a library that writes by file name
                                (``safetensors.save_file``, ``onnx.save``, ``cv2.imwrite``)
``fsync_directory``             make a rename or a new file in a folder durable
``remove_stale_temporaries``    clean up after writers that were killed
==============================  ==============================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

_TEMP_SUFFIX = ".tmp"


def _temp_prefix(final: Path) -> str:
    return f".{final.name}."


def _temp_name(final: Path) -> Path:
    return final.with_name(f"{_temp_prefix(final)}{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")


def _publish(temp: Path, final: Path, mode: int) -> None:
    """The last step of every atomic write: the finished temporary file takes its mode and its final name."""
    os.chmod(temp, mode)
    os.replace(temp, final)


def _discard(temp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(temp)


def fsync_directory(directory: str | Path) -> None:
    """Make a rename or new file in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename durability is the OS's job there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file; on a clean exit it replaces ``path`` atomically, on an error it vanishes.

    Use for data produced in pieces (a large engine, a streamed report) so that it
    never has to be held in memory twice.
    """
    final = Path(path)
    directory = final.parent if str(final.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {final}: folder {directory} does not exist")
    temp = _temp_name(final)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _publish(temp, final, mode)
    except BaseException:
        _discard(temp)
        raise
    fsync_directory(directory)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename, fsync folder)."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding), mode)


def atomic_write_json(path: str | Path, obj: Any, mode: int = 0o644, *, indent: int | None = 2,
                      sort_keys: bool = True, ensure_ascii: bool = False, allow_nan: bool = True) -> None:
    """Write ``obj`` as UTF-8 JSON plus a final newline, atomically.

    Defaults: indented and key-sorted (stable output diffs well). Pass ``allow_nan=False`` for
    documents other tools must parse (NaN/Infinity are not JSON; ValueError instead).
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, allow_nan=allow_nan) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def promote(written: str | Path, final: str | Path) -> None:
    """Give a finished file (written under a temporary name, then checked) its final name, durably.

    The file's data is fsynced, it is renamed over ``final`` in one step, and the folder is
    fsynced, so after a crash ``final`` is either the old file or the whole new one.
    """
    source, target = Path(written), Path(final)
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    fsync_directory(target.parent if str(target.parent) else Path("."))


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that only takes a file name.

    On a clean exit the file written there is fsynced and renamed over ``path`` (then the
    folder is fsynced); on an error, or when nothing was written, ``path`` is left as it was and
    the temporary file is removed. Only that one file is covered: a writer that adds side files
    (ONNX external data) must write them first, by their final names.
    """
    final = Path(path)
    directory = final.parent if str(final.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {final}: folder {directory} does not exist")
    temp = _temp_name(final)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))  # reserve the name
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size == 0:
                raise OSError(f"nothing was written to {final} (the temporary file {temp.name} is empty)")
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(temp, final, mode)
    except BaseException:
        _discard(temp)
        raise
    fsync_directory(directory)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def stale_temporaries(path: str | Path) -> list[Path]:
    """Leftover temporary files for ``path`` whose writing process no longer exists."""
    final = Path(path)
    directory = final.parent if str(final.parent) else Path(".")
    prefix = _temp_prefix(final)
    found: list[Path] = []
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        middle = name[len(prefix) : -len(_TEMP_SUFFIX)]
        pid_text = middle.split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            found.append(entry)
    return sorted(found)


def remove_stale_temporaries(path: str | Path) -> int:
    """Delete leftovers of killed writers of ``path``; returns how many were removed."""
    removed = 0
    for entry in stale_temporaries(path):
        try:
            entry.unlink()
            removed += 1
            log.info("removed %s, left by a writer that was killed", entry)
        except OSError as exc:
            log.warning("could not remove stale temporary %s: %s", entry, exc)
    return removed
