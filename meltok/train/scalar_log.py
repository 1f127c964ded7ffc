"""Scalar logs of a run: always ``RUN/logs/scalars.jsonl``, plus TensorBoard event files when
the ``tensorboard`` package is importable (``torch.utils.tensorboard.SummaryWriter``).

Each JSONL line is ``{"step": int, "time": unix seconds, "scalars": {tag: value}}``; tags are
``train/...``, ``val/...``, ``codebook/...``, ``lr/...``, ``time/...``. ``tensorboard --logdir
RUN/logs`` shows the event files; the JSONL needs no dependency and survives resumes (lines
are appended; after a resume, steps already logged may appear again).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


class ScalarLog:
    """``write(step, {tag: value})``; a no-op object when ``enabled`` is False (ranks > 0)."""

    def __init__(self, run_dir, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._writer = None
        self._file = None
        if not enabled:
            return
        folder = Path(run_dir) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "scalars.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: scalars go to %s only", self.path)
            else:
                self._writer = SummaryWriter(log_dir=str(folder))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled or not scalars:
            return
        clean = {tag: float(value) for tag, value in scalars.items()}
        self._file.write(json.dumps({"step": int(step), "time": round(time.time(), 3), "scalars": clean}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for tag, value in clean.items():
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(run_dir) -> list[dict]:
    """All JSONL records of a run (for tests and quick plots)."""
    path = Path(run_dir) / "logs" / "scalars.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
