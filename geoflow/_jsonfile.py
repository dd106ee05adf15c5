"""Local JSON files replaced whole: ledgers, summaries, catalogs, training state, stage files.

A reader sees the old file or the whole new one, never a part, and a failed write (a full
disk, a kill) leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike[str], doc: Any, *, indent: int = 1,
               sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``doc`` as JSON to ``path`` atomically (temporary file, fsync, rename).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> write_json(p, {"b": 1, "a": 2}, sort_keys=True)
    >>> p.read_text()
    '{\\n "a": 2,\\n "b": 1\\n}'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One name per process and thread: writers of the same file never rename each other's.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=indent, sort_keys=sort_keys, default=default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["write_json"]
