"""Validation during training: greedy outputs of the policy being trained on the *same* held-out validation
situations (``data.validation_situations``, carved out of the training carve, never the evaluation split), scored
by the OP reward and by the independent SBERT evaluator. Settings are chosen on this curve, not on evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import ConfigError, RunConfig, trl_value
from .coverage import sbert_matches
from .prompts import implicit
from .runs import RunPaths
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

    def score(self, model: Any, tok: Any, step: int, made: dict[str, list] | None = None) -> dict[str, Any]:
        """``made``: the ``outputs`` of an earlier point of this policy, reused when they are of these situations."""
        sits = self.val["prompt"].tolist()
        if made and made["situations"] == sits:
            texts, clipped = made["texts"], made["clipped"]
        else:
            texts, clipped = greedy_outputs(model, tok, sits, self.max_new_tokens)
        prompts = [[{"role": "user", "content": implicit(s)}] for s in sits]
        totals = self.reward(prompts, texts, reference=self.val["answer"].tolist(), situation=sits)
        cores = [check_layout(t).core for t in texts]
        per, _, _ = sbert_matches(self.val, cores, self.encoder, self.threshold)
        parts = self.reward.last
        return {
            "step": step,
            "n": len(sits),
            "mean_reward": float(np.mean(totals)),
            "coverage_ladder": float(np.mean([p.coverage for p in parts])),
            "sbert_relative_accuracy": float(per["ratio"].mean()) if len(per) else None,
            "valid_format_rate": float(np.mean([p.valid_format for p in parts])),
            "clipped_ratio": float(np.mean(clipped)),
            "mean_tokens": float(np.mean([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts])),
            "per_situation": dict(zip(per["prompt"], per["ratio"])) if len(per) else {},
            "outputs": {"situations": sits, "texts": list(texts), "clipped": list(clipped)},
        }


BOOTSTRAP_REPS = 2000  # the curve's paired CIs (a constant: an evaluation setting never re-scores the curve)


def versus_start(points: list[dict[str, Any]], seed: int, reps: int = BOOTSTRAP_REPS) -> list[dict[str, Any]]:
    """Each point with its paired difference from the first (step 0) on the situations both scored: the bootstrap
    CI, and the minimum detectable effect at 80 % power for that many situations and that spread (what the curve
    can resolve). The per-situation scores and the outputs are dropped."""
    from .stats import paired_summary

    start = points[0]["per_situation"]
    out = []
    for point in points:
        mine = point["per_situation"]
        common = [p for p in start if p in mine]
        row = {k: v for k, v in point.items() if k not in ("per_situation", "outputs")}
        if point is not points[0] and len(common) > 1:
            res = paired_summary([mine[p] for p in common], [start[p] for p in common], reps=reps, seed=seed)
            row.update({"vs_start": res["diff"], "vs_start_ci_low": res["ci_low"], "vs_start_ci_high": res["ci_high"]})
            row.update({"vs_start_sd": res["sd_diff"], "vs_start_mde_80": res["mde_80"]})
        out.append(row)
    return out


def score_policies(
    cfg: RunConfig,
    paths: RunPaths,
    policies: list[tuple[int, str]],
    estimator: str,
    device: str,
    made: dict[int, dict[str, list]] | None = None,
) -> list[dict[str, Any]]:
    """One validation point per (step, saved policy folder): greedy outputs within GRPO's completion budget,
    scored by the reward (with ``estimator``) and by the independent evaluator. ``made``: step -> the ``outputs`` of
    an earlier point of the same policy (reused when they are of the same situations)."""
    from .lm import load
    from .models import agreement
    from .reward import build_reward

    budget = trl_value(cfg.train.grpo, "grpo", "max_completion_length")
    validator, points = None, []
    for step, path in policies:
        policy = load(path, device)
        if validator is None:
            agree = agreement(cfg, paths)
            reward = build_reward(cfg.reward, estimator, tokenizer=policy.tokenizer, device=device, agree=agree)
            validator = Validator(cfg, paths, reward, budget)
        point = validator.score(policy.model, policy.tokenizer, step, (made or {}).get(step))
        points.append({**point, "max_new_tokens": budget})
    return points
