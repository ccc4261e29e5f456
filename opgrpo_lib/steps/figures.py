"""Step 07: every figure and table from ``results/`` (no torch)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..figures import build_all, logged_results, results_source
from ..lifecycle import step_run
from ..runs import RunPaths


def run(cfg: RunConfig, paths: RunPaths, out_dir: Path | None = None) -> dict[str, Any]:
    """``<run>/figures`` from the run's results when it has them, else from the committed ``results/<profile>``
    (see :func:`figures.results_source`), plus the authors' logged numbers. Only figures of the run's own
    (current) results finish the step: its upstream steps must then be finished with these settings."""
    out_dir = Path(out_dir) if out_dir else paths.figures
    source, note = results_source(cfg, paths)
    own = source == Path(paths.results)
    with step_run(cfg, paths, "figures", upstream=own) as step:
        print(f"figures from {note} -> {out_dir}")
        staging = out_dir.with_name(f".{out_dir.name}.building")  # a failure leaves the old figures whole
        shutil.rmtree(staging, ignore_errors=True)
        statuses = build_all(source, staging, logged_results())
        shutil.rmtree(out_dir, ignore_errors=True)  # no figure of a feature switched off survives
        staging.rename(out_dir)
        if own:  # the step's record goes into its folder (``<run>/figures``) once the figures are in place
            step.begin()
    return {
        "out_dir": str(out_dir),
        "source": str(source),
        "source_note": note,
        "figures": [s.__dict__ for s in statuses],
    }
