"""``opgrpo publish``: make a finished run's results the committed ones (``results/<profile>``), regenerate the
committed figures from them and, for the README's profile, the README's results table. A plain ``make reproduce``
never writes there, so a user's own run cannot silently disagree with (or dirty) the committed numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .config import RunConfig
from .keys import is_current
from .lifecycle import run_lock
from .paths import REPO_ROOT, committed_figures, committed_results
from .registry import STEPS
from .runs import run_paths

README_PROFILE = "cpu"
HAND_RUN = ("sweep", "benchmarks")  # scripts/validation_sweep.py, benchmarks/grpo_step.py --profile <profile>


def publish(cfg: RunConfig, run_dir: str | None = None) -> list[str]:
    """Copy ``<run>/results`` over ``results/<profile>`` (refusing an unfinished or stale run) and rebuild the
    committed figures; returns what was done, line by line."""
    from .figures import build_all, logged_results
    from .paths import default_run_dir

    root = Path(run_dir) if run_dir else default_run_dir(cfg.profile)
    if not root.is_dir():  # refuse before anything is created
        raise FileNotFoundError(
            f"run folder {root} does not exist: nothing to publish (run `opgrpo reproduce "
            f"--profile {cfg.profile}{' --run-dir ' + str(run_dir) if run_dir else ''}` first)"
        )
    paths = run_paths(cfg, root)
    with run_lock(paths.root, "opgrpo publish"):
        return _publish(cfg, paths, build_all, logged_results)


def _publish(cfg: RunConfig, paths, build_all, logged_results) -> list[str]:
    stale = [
        s.name
        for s in STEPS.values()
        if s.name != "figures" and s.enabled(cfg) and not is_current(cfg, paths.root, s.name)
    ]
    if stale:
        raise RuntimeError(
            f"{paths.root}: steps {stale} are not finished with the current settings and code; run `opgrpo reproduce "
            f"--profile {cfg.profile}` first"
        )
    dest = committed_results(cfg.profile)
    staging = dest.with_name(f".{dest.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(paths.results, staging)
    for hand_run in HAND_RUN:  # made by hand, not by a run: kept unless this run brings its own
        if not (staging / hand_run).exists() and (dest / hand_run).exists():
            shutil.copytree(dest / hand_run, staging / hand_run)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    lines = [f"results: {paths.results} -> {dest}"]
    figs = committed_figures(cfg.profile)
    shutil.rmtree(figs, ignore_errors=True)
    build_all(dest, figs, logged_results())
    lines.append(f"figures: {figs}")
    if cfg.profile == README_PROFILE:
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "update_readme.py"), "--profile", cfg.profile], check=True
        )
        lines.append("README.md results table regenerated")
    return lines
