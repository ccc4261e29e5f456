"""Step 04: OP-GRPO from the SFT policy (``train.init``) with the OP reward (TRL's ``GRPOTrainer``), then the
validation curve scored from its checkpoints (its own step and key: an evaluation setting never retrains GRPO)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..config import ConfigError, RunConfig
from ..data import load_prepared, load_validation
from ..lifecycle import step_run
from ..lm import resolve_policy
from ..models import agreement, resolve_estimator
from ..progress import trainer_callback
from ..reward import build_reward
from ..runs import RunPaths, atomic_write_text
from ..train import (
    OptimizerInLastCheckpoint,
    check_disk,
    check_prompt_lengths,
    check_trainable_dtype,
    chunk_generation,
    drop_optimizers,
    ensure_unsloth,
    grpo_config,
    grpo_dataset,
    kept_checkpoints,
    load_model,
    log_frame,
    overlong_reward,
    precision_plan,
    resume_from,
    save_at,
    save_policy,
)


def run(cfg: RunConfig, paths: RunPaths, force: bool = False, callbacks: list | None = None) -> dict[str, Any]:
    """GRPO; a finished run with the same settings is a no-op, an interrupted one resumes from its last complete
    checkpoint (extra trainer ``callbacks`` are for benchmarks)."""
    if cfg.train.backend == "unsloth":
        ensure_unsloth()  # before anything else imports transformers
    with step_run(cfg, paths, "grpo", force) as step:
        if step.done:
            log_path = paths.results / "train_log.csv"
            log = pd.read_csv(log_path) if log_path.exists() else pd.DataFrame()
            result = {"policy": step.folder / "policy", "log": log, "skipped": True}
        else:
            result = _train(cfg, paths, step, callbacks or [])
    return result


def _train(cfg: RunConfig, paths: RunPaths, step, callbacks: list) -> dict[str, Any]:
    from trl import GRPOTrainer

    tc = cfg.train
    plan = precision_plan(cfg)  # every check that can refuse runs before the step folder is touched
    args = grpo_config(cfg, step.folder, plan)
    train, _ = load_prepared(paths.data)
    ds = grpo_dataset(train, cfg.data.grpo_rows if cfg.data.train_source == "final_train" else None)
    if tc.validation_every and load_validation(paths.data).empty:
        raise ConfigError("train.validation_every needs validation situations: set data.validation_situations")
    with step.timed("load"):
        init = resolve_policy(tc.init, cfg, paths.root)
        check_disk(cfg, init, paths.root, "grpo", kept_checkpoints(args, tc.validation_every))
        model, tok, peft_config = load_model(cfg, init, plan)
        longest = check_prompt_lengths(ds, tok, tc.max_prompt_length)
        device = "cpu" if args.use_cpu else "cuda"
        estimator, agree = resolve_estimator(cfg, paths), agreement(cfg, paths)
        reward = build_reward(cfg.reward, estimator, tokenizer=tok, device=device, agree=agree)
    extra = [trainer_callback("grpo"), OptimizerInLastCheckpoint(), *callbacks]
    extra += [save_at(tc.validation_every)] if tc.validation_every else []
    out = step.begin()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward, *overlong_reward(cfg, args)],
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=extra,
    )
    check_trainable_dtype(trainer.model, plan)
    chunk_generation(trainer.model, tc.generation_chunk)
    with step.timed("train"):
        trainer.train(resume_from_checkpoint=resume_from(step.resuming, out))
    policy = save_policy(trainer, out / "policy", merge=tc.merge_adapter)
    log = log_frame(trainer.state.log_history)
    if args.process_index == 0:
        atomic_write_text(paths.results / "train_log.csv", log.to_csv(index=False))
        drop_optimizers(out, "grpo")
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    step.inputs = [paths.data / "train.parquet"]
    step.extra = {
        "backend": tc.backend,
        "weights": cfg.reward.weights,
        "longest_prompt_tokens": longest,
        "world_size": args.world_size,
        "prompts": len(ds),
        "completions_per_step": per_step,
    }
    return {"policy": policy, "log": log}
