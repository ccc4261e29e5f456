"""``make reproduce``: run the numbered notebooks in order with papermill, skipping up-to-date steps."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .config import REPO_ROOT, load_profile
from .runs import atomic_write_text, run_paths

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def default_profile() -> tuple[str, str]:
    """(profile, reason): ``paper`` when a CUDA GPU and the ``[gpu]`` extra are present, else ``cpu``."""
    from importlib.util import find_spec

    if find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            if find_spec("unsloth") is not None:
                return "paper", f"CUDA GPU ({torch.cuda.get_device_name(0)}) and unsloth found"
            return "cpu", "CUDA GPU found but the [gpu] extra (unsloth) is not installed"
    return "cpu", "no CUDA GPU"


def notebooks(names: list[str] | None = None) -> list[Path]:
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if names:
        found = [p for p in found if p.stem in names or p.stem[:2] in names]
    return found


class StepFailed(RuntimeError):
    pass


def reproduce(
    profile: str, run_dir: str | None = None, only: list[str] | None = None, force: bool = False
) -> list[dict]:
    """Execute each notebook into ``<run_dir>/executed/``; a step whose key (config hash, notebook source and
    upstream keys) matches its record is skipped. A failure names the notebook and cell; earlier outputs stay."""
    import papermill as pm

    cfg = load_profile(profile)
    paths = run_paths(cfg, run_dir)
    executed = paths.root / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    upstream = ""
    report = []
    for nb in notebooks(only):
        key = hashlib.sha256(f"{cfg.config_hash}|{nb.read_bytes().hex()}|{upstream}".encode()).hexdigest()[:16]
        record = executed / f"{nb.stem}.done.json"
        out_nb = executed / nb.name
        if not force and record.exists() and json.loads(record.read_text()).get("key") == key and out_nb.exists():
            print(f"[skip] {nb.name}: up to date (key {key})", flush=True)
            report.append({"notebook": nb.name, "status": "skipped", "key": key})
            upstream = key
            continue
        print(f"[run ] {nb.name} (profile {profile})", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb), str(out_nb), parameters={"profile": profile, "run_dir": str(paths.root), "overrides": {}},
                kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False,
                request_save_on_cell_execute=True,
            )  # fmt: skip
        except pm.PapermillExecutionError as exc:
            record.unlink(missing_ok=True)
            raise StepFailed(
                f"{nb.name} failed in cell {exc.cell_index} (execution count {exc.exec_count}): {exc.ename}: {exc.evalue}"
                f"\nexecuted notebook: {out_nb}"
            ) from exc
        wall = time.perf_counter() - t0
        atomic_write_text(record, json.dumps({"key": key, "config_hash": cfg.config_hash, "wall_s": round(wall, 1)}))
        report.append({"notebook": nb.name, "status": "ran", "key": key, "wall_s": round(wall, 1)})
        upstream = key
    atomic_write_text(paths.root / "reproduce_report.json", json.dumps(report, indent=2))
    return report
