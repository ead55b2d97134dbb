"""The console's workspace: the one folder the server may read and write, nothing outside it.

Every path a client sends is relative to the workspace root and goes through
`Workspace.resolve`: absolute paths, `..` parts, control characters, backslashes and a leading
`-` (it would read as an option) are refused before the file system is touched; what is left is
resolved (symlinks followed) and must still lie inside the root, so a symlink pointing out is
refused too. Listings never follow symlinked folders.

`.jobs/` inside the root holds the console's job records and logs (`jobs`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ....errors import UserError
from ..errors import ApiError, error_type

JOBS_DIR = ".jobs"
# Folders never walked when listing (hidden ones, .jobs and .git included, are skipped too).
SKIP_DIRS = frozenset({"checkpoints", "logs", "__pycache__", "node_modules"})
MAX_DEPTH = 6
MAX_LISTED = 500
DATA_SUFFIXES = (".jsonl", ".json")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WorkspaceError(ApiError):
    """A path or file the console refuses or cannot read, answered as an error object."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(status, message, type=error_type(status), param="path", code=code)


def _invalid(message: str) -> WorkspaceError:
    return WorkspaceError(400, message, "invalid_path")


def check_relative(raw: str) -> PurePosixPath:
    """The client's path as clean relative parts; refuses what must never reach the disk."""
    if not isinstance(raw, str):
        raise _invalid("a path must be a string")
    if _CONTROL.search(raw):
        raise _invalid("a path must not contain control characters")
    if "\\" in raw:
        raise _invalid("use '/' in paths, not '\\'")
    if raw.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", raw):
        raise _invalid(f"{raw!r}: give a path relative to the workspace, not an absolute one")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _invalid(f"{raw!r}: '..' is not allowed in workspace paths")
    if any(p.startswith("-") for p in parts):
        raise _invalid(f"{raw!r}: a path part must not start with '-'")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class WorkspaceSetupError(UserError):
    """`--workspace` does not name a usable folder."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Workspace:
        try:
            root = Path(folder).expanduser().resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise WorkspaceSetupError(f"--workspace {folder}: {exc}") from exc
        if not root.is_dir():
            raise WorkspaceSetupError(f"--workspace {folder} is not a folder")
        return cls(root)

    def inside(self, path: Path) -> bool:
        """Whether an already resolved path is the root or below it."""
        return path == self.root or self.root in path.parents

    def resolve(self, raw: str, *, must_exist: bool = True) -> Path:
        """The absolute path of a workspace-relative `raw`, symlinks resolved, inside the root.

        400 invalid_path (absolute, `..`, control characters, backslashes, a leading '-');
        403 outside_workspace (it resolves outside: a symlink pointing out, even a dangling
        one); 404 not_found when `must_exist`. A path that does not exist yet is checked as
        far as it exists: the rest cannot hold symlinks.
        """
        candidate = self.root / check_relative(raw)
        try:
            resolved = candidate.resolve()  # follows every symlink that exists on the way
        except (OSError, RuntimeError) as exc:  # symlink loops
            raise _invalid(f"{raw!r}: {exc}") from None
        if not self.inside(resolved):
            raise WorkspaceError(403, f"{raw!r} points outside the workspace", "outside_workspace")
        if must_exist and not resolved.exists():
            raise WorkspaceError(404, f"{raw!r} does not exist", "not_found")
        return resolved

    def relative(self, path: Path) -> str:
        """The workspace-relative POSIX spelling of a path inside the root ('' for the root)."""
        rel = Path(path).resolve().relative_to(self.root).as_posix()
        return "" if rel == "." else rel

    def file(self, raw: str, suffixes: tuple[str, ...] = ()) -> Path:
        """An existing regular file inside the workspace, optionally with one of `suffixes`."""
        path = self.resolve(raw)
        if not path.is_file():
            raise WorkspaceError(400, f"{raw!r} is not a file", "not_a_file")
        if suffixes and not path.name.endswith(suffixes):
            raise WorkspaceError(
                400, f"{raw!r}: expected a {' or '.join(suffixes)} file", "wrong_file_type"
            )
        return path

    def folder(self, raw: str) -> Path:
        path = self.resolve(raw)
        if not path.is_dir():
            raise WorkspaceError(400, f"{raw!r} is not a folder", "not_a_folder")
        return path

    def inner_file(self, folder: Path, name: str) -> Path | None:
        """`folder/name` when it is a regular file inside the workspace; 403 when it points out."""
        path = folder / name
        if not path.is_file():
            return None
        if not self.inside(path.resolve()):
            raise WorkspaceError(
                403,
                f"{self.relative(folder)}/{name} points outside the workspace",
                "outside_workspace",
            )
        return path

    def new_folder(self, raw: str) -> Path:
        """A folder for a job to write: inside, not `.jobs`, absent or empty."""
        rel = check_relative(raw)
        if rel == PurePosixPath("."):
            raise _invalid("the output folder must be a sub-folder of the workspace")
        if rel.parts[0] == JOBS_DIR:
            raise _invalid(f"{JOBS_DIR}/ belongs to the console")
        path = self.resolve(raw, must_exist=False)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise WorkspaceError(
                409, f"{raw!r} already exists and is not an empty folder", "output_exists"
            )
        return path

    def _walk(self, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Path, list[str]]]:
        """(folder, file names) below the root, without symlinked or skipped folders."""
        for top, dirs, files in os.walk(self.root, followlinks=False):
            depth = len(Path(top).relative_to(self.root).parts)
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".") and d not in SKIP_DIRS and depth < max_depth
            )
            yield Path(top), sorted(files)

    def folders_with(self, marker: str) -> list[Path]:
        """Folders holding a regular file `marker` that lies inside the workspace."""
        found: list[Path] = []
        for top, files in self._walk():
            if marker in files and self._is_own_file(top / marker):
                found.append(top)
                if len(found) >= MAX_LISTED:
                    break
        return found

    def data_files(self, exclude: frozenset[str] = frozenset()) -> list[str]:
        """JSONL/JSON files the training form can offer: not named in `exclude`, and not in a
        folder holding one of those names (a run's or a report's own folder)."""
        out: list[str] = []
        for top, files in self._walk(max_depth=4):
            if exclude.intersection(files):
                continue
            for name in files:
                wanted = name.endswith(DATA_SUFFIXES) and name not in exclude
                if wanted and name[0] not in ".-" and self._is_own_file(top / name):
                    out.append((top / name).relative_to(self.root).as_posix())
            if len(out) >= MAX_LISTED:
                break
        return out

    def _is_own_file(self, path: Path) -> bool:
        try:
            return path.is_file() and self.inside(path.resolve(strict=True))
        except (OSError, RuntimeError):
            return False
