"""Validation during training: greedy outputs of the policy being trained on the *same* held-out validation
situations (``data.validation_situations``, carved out of the training carve, never the evaluation split), scored
by the OP reward and by the independent SBERT evaluator. Settings are chosen on this curve, not on evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import ConfigError, RunConfig
from .prompts import implicit
from .runs import RunPaths, atomic_write_text


def greedy_outputs(model: Any, tok: Any, situations: list[str], max_new_tokens: int, batch_size: int = 16):
    """(texts, clipped) — greedy completions of the implicit prompt; ``clipped`` = hit ``max_new_tokens``."""
    import torch

    side, tok.padding_side = tok.padding_side, "left"
    texts, clipped = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(situations), batch_size):
            batch = situations[start : start + batch_size]
            chats = [tok.apply_chat_template([{"role": "user", "content": implicit(s)}], tokenize=False,
                                             add_generation_prompt=True) for s in batch]  # fmt: skip
            enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, do_sample=False, temperature=None, top_p=None, top_k=None,
                                     max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)  # fmt: skip
            new = out[:, enc["input_ids"].shape[1] :]
            ended = (new == tok.eos_token_id).any(dim=1) | (new == tok.pad_token_id).any(dim=1)
            texts += tok.batch_decode(new, skip_special_tokens=True)
            clipped += [bool(new.shape[1] >= max_new_tokens and not e) for e in ended.tolist()]
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
        from .evaluate import sbert_coverage
        from .text import check_layout

        sits = self.val["prompt"].tolist()
        texts, clipped = greedy_outputs(model, tok, sits, self.max_new_tokens)
        prompts = [[{"role": "user", "content": implicit(s)}] for s in sits]
        totals = self.reward(prompts, texts, reference=self.val["answer"].tolist(), situation=sits)
        cores = [check_layout(t).core for t in texts]
        _, summ = sbert_coverage(self.val, cores, self.encoder, self.threshold)
        parts = self.reward.last
        return {
            "step": step, "n": len(sits), "mean_reward": float(np.mean(totals)),
            "coverage_ladder": float(np.mean([p.coverage for p in parts])),
            "sbert_relative_accuracy": summ["relative_accuracy"],
            "valid_format_rate": float(np.mean([p.valid_format for p in parts])),
            "clipped_ratio": float(np.mean(clipped)),
            "mean_tokens": float(np.mean([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts])),
        }  # fmt: skip


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
