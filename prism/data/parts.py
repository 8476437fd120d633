"""Resumable row streams: results written in small Parquet part files as they are produced.

Long scans (``prism manifest build`` over 100k files, ``prism qc``) write every batch of
rows to ``<folder>/part-*.parquet`` the moment it is ready. A crashed or killed run loses
at most one batch; re-running the same command reads the keys already present and skips
them. Each part is written to a temporary name and renamed, so a part is either complete
or absent, and concurrent writers (shards of one job) never collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pandas as pd


class PartWriter:
    """Appends batches of rows as Parquet part files in ``folder``.

    Args:
        folder: where the parts live (created on first write).
        key: the column that identifies a row (used to skip finished work on resume).
    """

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder, self.key = Path(folder), key
        self._prefix = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._count = 0

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def done_keys(self) -> set[str]:
        """Keys of every row already written by this or an earlier run."""
        keys: set[str] = set()
        for part in self.parts():
            keys.update(pd.read_parquet(part, columns=[self.key])[self.key])
        return keys

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` as one new part (atomic)."""
        if not rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{self._prefix}-{self._count:06d}.parquet"
        self._count += 1
        tmp = self.folder / f".{name}.tmp"
        pd.DataFrame(rows).to_parquet(tmp, index=False)
        os.replace(tmp, self.folder / name)

    def read_all(self) -> pd.DataFrame:
        """Every row written so far; the last row wins where a key repeats."""
        parts = self.parts()
        if not parts:
            return pd.DataFrame()
        frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        return frame.drop_duplicates(subset=[self.key], keep="last").reset_index(drop=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
