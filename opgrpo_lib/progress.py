"""Progress events for ``opgrpo reproduce``: the library appends one JSON line per event to the file named by
``$OPGRPO_PROGRESS_FILE`` (set by the pipeline; unset = no-op), and the pipeline prints them on the console while a
notebook runs (papermill shows nothing of a running cell)."""

from __future__ import annotations

import json
import os
import time

ENV = "OPGRPO_PROGRESS_FILE"
_last: dict[str, float] = {}


def emit(stage: str, done: int, total: int | None = None, every_s: float = 10.0, **info: object) -> None:
    """Record that ``stage`` reached ``done`` of ``total`` (throttled to one event per ``every_s``, the last kept)."""
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.time()
    if total is None or done < total:
        if now - _last.get(stage, 0.0) < every_s:
            return
    _last[stage] = now
    event = {"t": now, "stage": stage, "done": done, "total": total, **info}
    with open(path, "a") as fh:
        fh.write(json.dumps(event, default=str) + "\n")


def trainer_callback(stage: str):
    """A transformers ``TrainerCallback`` that reports step k/N and the latest logged loss/reward."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        latest: dict[str, float] = {}

        def on_log(self, args, state, control, logs=None, **kw):
            for key in ("reward", "loss"):
                if logs and isinstance(logs.get(key), (int, float)):
                    self.latest[key] = round(float(logs[key]), 4)

        def on_step_end(self, args, state, control, **kw):
            emit(stage, state.global_step, state.max_steps, every_s=5.0, **self.latest)

    return _Progress()
