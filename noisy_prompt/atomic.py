"""Writing a file so that a reader sees the old file or the whole new one, never half of it.

Every record, report and checkpoint the project writes goes through `replacing`: the content is written
to a temporary file beside the target (same filesystem, so the rename is atomic) and renamed over it
only when writing succeeded; a failed write leaves the old file and no temporary behind.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it atomically replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save, atomically."""
    import torch

    with replacing(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
