"""Step 03: SFT warm start on implicit prompt -> core perspectives + summary (TRL's ``SFTTrainer``), then the
end-of-SFT validation point (its own step and key: a reward- or eval-only change re-scores without retraining)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..data import load_prepared
from ..lifecycle import step_run
from ..models import resolve
from ..progress import trainer_callback
from ..runs import RunPaths, atomic_write_parquet, atomic_write_text
from ..sft_data import build_summaries, sft_dataset, sft_targets
from ..train import (
    OptimizerInLastCheckpoint,
    check_disk,
    check_trainable_dtype,
    drop_optimizers,
    ensure_unsloth,
    load_model,
    log_frame,
    precision_plan,
    resume_from,
    save_policy,
    sft_config,
)


def _read_back(paths: RunPaths, out: Path, log_name: str) -> dict[str, Any]:
    log_path = paths.results / log_name
    log = pd.read_csv(log_path) if log_path.exists() else pd.DataFrame()
    return {"policy": out / "policy", "log": log, "skipped": True}


def run(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any]:
    """SFT of the base policy; a finished run with the same settings is a no-op, an interrupted one resumes."""
    if cfg.train.backend == "unsloth":
        ensure_unsloth()  # before anything else imports transformers
    with step_run(cfg, paths, "sft", force) as step:
        if step.done:
            result = _read_back(paths, step.folder, "sft_train_log.csv")
        else:
            result = _train(cfg, paths, step)
    return result


def _train(cfg: RunConfig, paths: RunPaths, step) -> dict[str, Any]:
    from trl import SFTTrainer

    train, _ = load_prepared(paths.data)  # every check that can refuse runs before the step folder is touched
    check_disk(cfg, resolve(cfg.models.policy), paths.root, "sft")
    plan = precision_plan(cfg)
    model, tok, peft_config = load_model(cfg, resolve(cfg.models.policy), plan)
    out = step.begin()
    with step.timed("summaries"):
        summaries = build_summaries(cfg, train, out / "summaries.jsonl")
    atomic_write_parquet(
        pd.DataFrame({"prompt": list(summaries), "summary": list(summaries.values())}), out / "summaries.parquet"
    )
    ds = sft_dataset(train, sft_targets(cfg, train, summaries, tok))
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, out, plan),
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[trainer_callback("sft"), OptimizerInLastCheckpoint()],
    )
    check_trainable_dtype(trainer.model, plan)
    with step.timed("train"):
        trainer.train(resume_from_checkpoint=resume_from(step.resuming, out))
    policy = save_policy(trainer, out / "policy", merge=cfg.train.merge_adapter)
    log = log_frame(trainer.state.log_history)
    atomic_write_text(paths.results / "sft_train_log.csv", log.to_csv(index=False))
    drop_optimizers(out, "sft")
    step.inputs = [paths.data / "train.parquet"]
    step.extra = {
        "backend": cfg.train.backend,
        "summaries": cfg.train.summaries.source,
        "rows": len(ds),
        "rows_over_budget": len(train) - len(ds),
    }
    return {"policy": policy, "log": log, "rows": len(ds)}
