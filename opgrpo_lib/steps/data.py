"""Step 01: fetch OP-V2 (hash-checked), parse it and carve train / validation / evaluation situations."""

from __future__ import annotations

import json

from ..config import RunConfig
from ..data import PreparedData, prepare, save
from ..lifecycle import step_run
from ..paths import atomic_write_text
from ..runs import RunPaths


def run(cfg: RunConfig, paths: RunPaths) -> PreparedData:
    """Prepare the splits: parquet under ``<run>/data``, the data card under ``results/``, a manifest."""
    with step_run(cfg, paths, "data") as step:
        step.begin()
        with step.timed("prepare"):
            prepared = prepare(cfg)
        with step.timed("write"):
            written = save(prepared, paths.data)
            atomic_write_text(paths.results / "data_card.json", json.dumps(prepared.card, indent=2))
        step.inputs = [written["train"], written["eval"]]
    return prepared
