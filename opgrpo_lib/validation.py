"""Validation during training: greedy outputs of the policy being trained on the *same* held-out validation
situations (``data.validation_situations``, carved out of the training carve, never the evaluation split), scored
by the OP reward and by the independent SBERT evaluator. Settings are chosen on this curve, not on evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import ConfigError, RunConfig
from .coverage import sbert_matches
from .prompts import implicit
from .runs import RunPaths, atomic_write_text
from .text import check_layout


def greedy_outputs(model: Any, tok: Any, situations: list[str], max_new_tokens: int, batch_size: int = 16):
    """(texts, clipped) — greedy completions of the implicit prompt (``lm.sample``); ``clipped`` = hit
    ``max_new_tokens`` without an end token. The model's mode and the tokenizer's padding side are restored."""
    from .lm import LM, sample_clipped

    side, tok.padding_side = tok.padding_side, "left"
    texts, clipped = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(situations), batch_size):
            batch = [implicit(s) for s in situations[start : start + batch_size]]
            out, cut = sample_clipped(LM(model, tok), batch, max_new_tokens, temperature=0.0)
            texts += out
            clipped += cut
    finally:
        tok.padding_side = side
        model.train(was_training)
    return texts, clipped


class Validator:
    """Scores a policy on the validation situations; one row per call (a point of the validation curve)."""

    def __init__(self, cfg: RunConfig, paths: RunPaths, reward: Any, max_new_tokens: int):
        from .data import load_validation
        from .reward import SentenceEncoder

        val = load_validation(paths.data).iloc[: cfg.train.validation_rows]
        if val.empty:
            raise ConfigError("train.validation_every needs validation situations: set data.validation_situations")
        self.val, self.reward, self.max_new_tokens = val, reward, max_new_tokens
        self.threshold = cfg.eval.sbert_thresholds[0]
        self.encoder = SentenceEncoder(cfg.models.eval_encoder, batch_size=cfg.reward.batch_size)

    def score(self, model: Any, tok: Any, step: int) -> dict[str, Any]:
        sits = self.val["prompt"].tolist()
        texts, clipped = greedy_outputs(model, tok, sits, self.max_new_tokens)
        prompts = [[{"role": "user", "content": implicit(s)}] for s in sits]
        totals = self.reward(prompts, texts, reference=self.val["answer"].tolist(), situation=sits)
        cores = [check_layout(t).core for t in texts]
        per, _, _ = sbert_matches(self.val, cores, self.encoder, self.threshold)
        parts = self.reward.last
        return {
            "step": step, "n": len(sits), "mean_reward": float(np.mean(totals)),
            "coverage_ladder": float(np.mean([p.coverage for p in parts])),
            "sbert_relative_accuracy": float(per["ratio"].mean()) if len(per) else None,
            "valid_format_rate": float(np.mean([p.valid_format for p in parts])),
            "clipped_ratio": float(np.mean(clipped)),
            "mean_tokens": float(np.mean([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts])),
        }  # fmt: skip


def sft_point(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any] | None:
    """Step ``sft_validation`` (run by notebook 03 after SFT): does the saved SFT policy finish the layout within
    GRPO's completion budget? Greedy outputs on the validation situations -> ``results/sft_validation.json``. Its
    own key (reward, evaluator, budget), so a reward- or eval-only change re-scores the policy without retraining."""
    from .estimator import resolve_estimator
    from .lm import load, resolve_policy
    from .provenance import begin, mark, require_upstream
    from .reward import build_reward
    from .runs import resolve_device, timed, write_manifest

    if not cfg.train.validation_every:
        return None
    out_json = paths.results / "sft_validation.json"
    require_upstream(cfg, paths.root, "sft_validation")
    if begin(cfg, paths.root, "sft_validation", force) == "finished" and out_json.exists():
        return json.loads(out_json.read_text())
    device = resolve_device(cfg)
    timings: dict[str, float] = {}
    with timed(timings, "validation"):
        policy = load(resolve_policy("run:sft", cfg, paths.root), device)
        estimator = resolve_estimator(cfg, paths) if cfg.reward.estimator != "run:estimator" else cfg.models.encoder
        reward = build_reward(cfg.reward, estimator, tokenizer=policy.tokenizer, device=device)
        budget = cfg.train.grpo.get("max_completion_length", 256)
        point = Validator(cfg, paths, reward, budget).score(policy.model, policy.tokenizer, 0)
    record = {**point, "max_new_tokens": budget,
              "reward_estimator": "base encoder (models.encoder): step 02 may not have run"}  # fmt: skip
    atomic_write_text(out_json, json.dumps(record, indent=2))
    step_dir = paths.step("sft_validation")
    write_manifest(step_dir, "03_sft_validation", cfg, timings, results=paths.results)
    mark(step_dir, cfg, "sft_validation", "finished")
    return record


def curve_callback(validator: Validator, every: int, out_csv: Path):
    """A TrainerCallback adding a validation point at step 0 (or the resumed step) and every ``every`` steps."""
    from transformers import TrainerCallback

    from .progress import emit

    rows: list[dict[str, Any]] = pd.read_csv(out_csv).to_dict("records") if out_csv.exists() else []

    def point(model, tok, step):
        if any(r["step"] == step for r in rows):
            return
        emit("validation", step, None, every_s=0.0)
        rows.append(validator.score(model, tok, step))
        atomic_write_text(out_csv, pd.DataFrame(rows).sort_values("step").to_csv(index=False))

    class _Curve(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
            point(model, processing_class, state.global_step)

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                point(model, processing_class, state.global_step)

    return _Curve()
