"""Per-sample records of what SGL did, kept on the model and optionally appended to a JSON-lines file."""

from __future__ import annotations

import json
import os
import threading

STATS_FILE_ENV = "SGL_STATS_FILE"
_file_lock = threading.Lock()


class StatsLog:
    """Records since ``apply``; each one is also written to ``$SGL_STATS_FILE`` and flushed at once."""

    def __init__(self, path: str | None = None):
        self.records: list[dict] = []
        self.path = path if path is not None else os.environ.get(STATS_FILE_ENV) or None

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.path:
            line = json.dumps(record, sort_keys=True)
            with _file_lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
