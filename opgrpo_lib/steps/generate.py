"""Step 05: outputs of every configured system for the evaluation splits."""

from __future__ import annotations

import pandas as pd

from ..config import RunConfig
from ..data import load_prepared
from ..device import resolve_device
from ..generate import RECORD_COLUMNS, done_rows, eval_items, generate_rows, job_key, lazy, modplural_fn, policy_fn
from ..lifecycle import step_run
from ..runs import RunPaths, atomic_write_parquet, atomic_write_text


def run(cfg: RunConfig, paths: RunPaths, progress: bool = True) -> pd.DataFrame:
    """``<run>/generate/<system>.jsonl`` plus one ``outputs.parquet``, and the texts behind every reported number
    under ``results/generations/``; rows made under another fingerprint (other settings, a retrained policy) are
    regenerated, matching ones reused."""
    with step_run(cfg, paths, "generate") as step:
        device = resolve_device(cfg)
        _, ev = load_prepared(paths.data)
        out_dir = step.begin()
        frames, rows = [], {}  # rows: per system, generated now vs reused from an earlier run
        for system in cfg.generate.systems:
            name, items = system.name, eval_items(ev, cfg.generate, system.split_rows)
            out, key = out_dir / f"{name}.jsonl", job_key(cfg, system, None)
            reused = len({p for p, _ in items} & set(done_rows(out, key)))
            rows[name] = {"generated": len({p for p, _ in items}) - reused, "reused": reused}
            if system.kind == "modplural":
                fn = lazy(lambda: modplural_fn(cfg, device))
            else:
                fn = lazy(lambda system=system: policy_fn(system, cfg, paths.root, device))
            with step.timed(name):
                frames.append(generate_rows(fn, items, name, "default", cfg.generate, out, key, progress))
        outputs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECORD_COLUMNS)
        atomic_write_parquet(outputs, out_dir / "outputs.parquet")
        _publish_texts(outputs, paths)
        step.inputs = [paths.data / "eval.parquet"]
        step.extra = {"retries": cfg.generate.retries, "device_used": device, "rows": rows}
    return outputs


def _publish_texts(outputs: pd.DataFrame, paths: RunPaths) -> None:
    """One JSONL per system under ``results/generations``; a system removed from the profile leaves no file."""
    for name, part in outputs.groupby("system", sort=False):
        atomic_write_text(paths.results / "generations" / f"{name}.jsonl", part.to_json(orient="records", lines=True))
    current = {f"{name}.jsonl" for name in outputs["system"].unique()}
    for old in (paths.results / "generations").glob("*.jsonl"):
        if old.name not in current:
            old.unlink()
