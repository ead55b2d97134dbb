"""Files qwen3-lora writes: its cache folder, and crash-safe outputs.

Every output a user relies on (adapters, tokenizers, configs, merged models, reports,
predictions) is written under a temporary name in the same folder, flushed to disk and then
renamed over the final name, so a crash or kill leaves either the previous complete file or the
new complete one, never a truncated file under the real name. Temporary names start with
`.tmp-`: a crashed write leaves at most a hidden leftover, which `remove_leftovers` clears.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

CACHE_ENV = "QWEN3_LORA_CACHE"
TEMP_PREFIX = ".tmp-"


class OutputError(UserError):
    """An output path cannot be written; the message names it and the reason."""


def cache_dir() -> Path:
    """`$QWEN3_LORA_CACHE`, default ~/.cache/qwen3-lora."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qwen3-lora")


def _temp_path(folder: Path, name: str) -> Path:
    return folder / f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's content to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under `folder`, then the folder itself."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fsync_file(path)
    _fsync_dir(Path(folder))


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return OutputError(
        f"cannot write {path}: {reason}{where}; choose another path, or free space or fix the "
        f"permissions there"
    )


def _writable_folder(folder: Path, target: Path) -> None:
    """Create `folder` if missing and check that a file can be created in it, for `target`."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"cannot write {target}: {folder} is a file, not a folder; choose another path"
        )
    probe = _temp_path(folder, "probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o666))
        probe.unlink(missing_ok=True)
    except OSError as exc:
        raise _cannot_write(target, exc) from exc


def check_writable(target: str | Path) -> None:
    """Fail early, with a clear message, when `target` (a file or a folder written later) could
    not be written: its folder is created if missing and must take new files."""
    _writable_folder(Path(target).parent, Path(target))


def output_folder(path: str | Path, option: str) -> Path:
    """Create output folder `path` (named by command-line `option`) or explain why it cannot be
    written, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; choose another {option}")
    _writable_folder(path, path)
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """Fail early when output file `path` (command-line `option`) could not be written later."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; name a file")
    check_writable(path)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; on success it is fsynced and renamed to `path`,
    on failure removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _temp_path(path.parent, path.name)
        # Created like any new file (0666 less the umask), not mkstemp's 0600.
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _new_stage(parent: Path, name: str, folder: Path) -> Path:
    """A new, empty hidden folder in `parent` (created if missing) to stage `folder`'s files in."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = _temp_path(parent, name)
        stage.mkdir()
    except OSError as exc:
        raise _cannot_write(folder, exc) from exc
    return stage


@contextlib.contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """An empty staging folder inside `folder` to save files into (`save_pretrained`, ...).

    On success every staged file is fsynced and renamed into `folder`, each atomically; on an
    exception nothing in `folder` changes. The files are not replaced as one set: a crash
    between two renames leaves some files new and some old, each of them complete.
    """
    folder = Path(folder)
    stage = _new_stage(folder, "stage", folder)
    try:
        yield stage
        fsync_tree(stage)
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = folder / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        _fsync_dir(folder)
    except OSError as exc:
        raise _cannot_write(folder, exc) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: str | Path) -> Iterator[Path]:
    """A staging folder beside `folder` (which must be absent or empty) to write into; on success
    it is renamed to `folder` in one step, so `folder` appears complete or not at all."""
    folder = Path(folder)
    stage = _new_stage(folder.parent, folder.name, folder)
    try:
        yield stage
        fsync_tree(stage)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        os.rename(stage, folder)  # fails, instead of merging, if `folder` was filled meanwhile
        _fsync_dir(folder.parent)
    except OSError as exc:
        raise _cannot_write(folder, exc) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the temporary files and staging folders that killed writes left in `folder`."""
    found = sorted(Path(folder).glob(f"{TEMP_PREFIX}*"))
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found
