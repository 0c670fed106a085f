"""File modes of what langground writes: atomic writes go through ``tempfile.mkstemp`` / ``mkdtemp``,
which create 0600 files and 0700 directories; the files a user shares (checkpoints, configs,
vocabularies, predictions) get the modes a plain ``open`` would give, i.e. 0666 / 0777 minus the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    """This process's umask (read from /proc where possible: setting it to read it back races threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_default(path: str | os.PathLike, directory: bool | None = None) -> None:
    """Give ``path`` the mode a plain ``open`` / ``mkdir`` would: 0666 (files) / 0777 (directories)
    minus the umask."""
    p = Path(path)
    is_dir = p.is_dir() if directory is None else directory
    os.chmod(p, (0o777 if is_dir else 0o666) & ~umask())


def chmod_tree_default(root: str | os.PathLike) -> None:
    """:func:`chmod_default` on ``root`` and everything under it (a directory written by mkdtemp)."""
    root = Path(root)
    chmod_default(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            chmod_default(Path(dirpath) / name, directory=True)
        for name in filenames:
            chmod_default(Path(dirpath) / name, directory=False)
