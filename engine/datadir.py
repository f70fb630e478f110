"""The data folder is private: folders 0700, files 0600.

It holds thumbnails of pictures from private channels, who posted them and where, job state and
logs, so nobody else on the machine may read it. Three layers:
  - `clipbot` sets the process umask to 077 (`PRIVATE_UMASK`), so whatever a library creates
    (SQLite's -wal/-shm files, Hugging Face downloads, logs) is private from the start;
  - the code that creates folders and files in it gives them these modes explicitly
    (`make_dir`, `create_file`, `write_file`, `make_private`), for processes that embed clipbot
    under a looser umask (tests, notebooks);
  - `tighten` at start-up fixes what an older version (or another umask) left readable.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
log = logging.getLogger(__name__)


def make_dir(path: str | Path) -> Path:
    """Create `path` and any missing parents as 0700 folders. Existing folders keep their mode
    (one may be a folder the user named, like `--out .`); `tighten` sees to the data folder's."""
    path = Path(path)
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass
    return path


def create_file(path: str | Path) -> Path:
    """Make sure `path` exists as a 0600 file (its contents left alone): call before a library
    opens it (SQLite gives its journal and WAL files the mode of the database file)."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _chmod(path, FILE_MODE)
    return path


def write_file(path: str | Path, data: bytes) -> Path:
    """`path.write_bytes(data)`, the file 0600 before a byte is in it."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, FILE_MODE)  # it may have existed with another mode
        file.write(data)
    return path


def make_private(path: str | Path) -> None:
    """Set a file that a library wrote (torch.save, logging) to 0600."""
    _chmod(Path(path), FILE_MODE)


def tighten(root: str | Path) -> None:
    """Folders under `root` (itself included) to 0700, files to 0600; symbolic links are not
    followed. A folder that is clearly not clipbot's own (/, the home folder, a sticky folder
    such as /tmp) is left alone, with a warning."""
    root = Path(root)
    try:
        info = root.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        return
    if root.resolve() in (Path("/"), Path.home().resolve()) or info.st_mode & stat.S_ISVTX:
        log.warning("not making %s private: it is not a folder of clipbot's own (set CLIPBOT_DATA_DIR)", root)
        return
    _chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            _chmod(Path(folder, name), DIR_MODE, follow=False)
        for name in files:
            _chmod(Path(folder, name), FILE_MODE, follow=False)


def _chmod(path: Path, mode: int, *, follow: bool = True) -> None:
    try:
        info = path.stat() if follow else path.lstat()
        if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
            return
        os.chmod(path, mode)
    except FileNotFoundError:  # removed meanwhile (a pruned cache entry, a finished temp file)
        pass
    except PermissionError:  # not ours (a shared model cache, say): say so, don't stop
        log.warning("cannot make %s private (mode %o): not its owner", path, mode)
