"""Per-sample records of what SGL did, kept on the model and optionally appended to a JSON-lines file."""

from __future__ import annotations

import json
import os
import threading

STATS_FILE_ENV = "SGL_STATS_FILE"
_file_lock = threading.Lock()


class StatsLog:
    """Records since ``apply``; each one is also written to ``$SGL_STATS_FILE`` and flushed at once.

    The file is opened (created if missing) when the log is made, so a path that cannot be written
    fails at ``apply``, not after a whole evaluation has run.
    """

    def __init__(self, path: str | None = None):
        self.records: list[dict] = []
        self._lock = threading.Lock()
        from_env = path is None
        if from_env:
            path = os.environ.get(STATS_FILE_ENV) or None
        self.path = path
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8"):
                    pass
            except OSError as error:
                where = f"{STATS_FILE_ENV}={self.path}" if from_env else f"stats file {self.path!r}"
                raise ValueError(f"{where} cannot be written ({error.strerror}): point it at a file in an "
                                 "existing, writable directory") from None

    def add(self, records: list[dict]) -> None:
        """Add the records of one call together (threads never interleave a call's records)."""
        with self._lock:
            self.records.extend(records)
        if self.path:
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
            with _file_lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
