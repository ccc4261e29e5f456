"""The reward–evaluator alignment check (notebook 03, after SFT, when ``alignment.samples`` is set): does each reward
variant pick the better of the policy's own samples as the independent evaluator judges them?"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..alignment import evaluator_scores, sample_completions, score_variants, summarize, variant_cfgs
from ..config import ConfigError, RunConfig, trl_value
from ..data import load_validation
from ..device import resolve_device
from ..lifecycle import rank0, step_run
from ..lm import load, resolve_policy
from ..models import resolve, resolve_estimator
from ..reward import SentenceEncoder
from ..runs import RunPaths, atomic_write_text


def run(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any] | None:
    """``results/alignment/samples.jsonl`` (every completion, its scores and the evaluator's) and ``summary.csv``
    (per score: best-of-n gain with its CI, Spearman, zero-coverage rate)."""
    ac, out = cfg.alignment, paths.results / "alignment"
    if not ac.samples or not rank0():
        return None
    with step_run(cfg, paths, "alignment", force) as step:
        if step.done and (out / "summary.csv").exists():
            return {"summary": pd.read_csv(out / "summary.csv"), "skipped": True}
        val = load_validation(paths.data).iloc[: ac.rows]
        if val.empty:
            raise ConfigError("alignment.samples needs validation situations: set data.validation_situations")
        device, policy = resolve_device(cfg), resolve_policy(ac.policy, cfg, paths.root)
        variants = variant_cfgs(cfg, ac.variants)
        step.begin()
        situations = [s for s in val["prompt"] for _ in range(ac.samples)]
        with step.timed("sample"):
            texts = sample_completions(
                load(policy, device),
                list(val["prompt"]),
                ac.samples,
                cfg.seed,
                _sampling(cfg),
                cfg.generate.batch_size,
            )
        with step.timed("score"):
            samples = _scored(cfg, paths, val, situations, texts, variants, device)
        summary = summarize(samples, ac.bootstrap_reps, cfg.seed)
        atomic_write_text(out / "samples.jsonl", samples.to_json(orient="records", lines=True, force_ascii=False))
        atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
        atomic_write_text(out / "settings.json", json.dumps(_settings(cfg, policy), indent=2))
        step.extra = {"policy": ac.policy, "completions": len(texts)}
    return {"summary": summary, "samples": samples}


def _sampling(cfg: RunConfig) -> dict[str, Any]:
    """How GRPO samples the policy (TRL's defaults where the profile says nothing)."""
    get = lambda key: trl_value(cfg.train.grpo, "grpo", key)  # noqa: E731
    return {"max_new_tokens": get("max_completion_length"), "temperature": get("temperature"), "top_p": get("top_p")}


def _scored(
    cfg: RunConfig,
    paths: RunPaths,
    val: pd.DataFrame,
    situations: list[str],
    texts: list[str],
    variants: dict,
    device: str,
) -> pd.DataFrame:
    """The completions with every variant's scores and the independent evaluator's."""
    load_enc = lambda name: SentenceEncoder(name, device=device, batch_size=cfg.reward.batch_size)  # noqa: E731
    encoders = {"estimator": load_enc(resolve_estimator(cfg, paths))}
    for name in {m for v in variants.values() for m in v.agree_with}:
        encoders[name] = load_enc(resolve(name))
    answers = dict(zip(val["prompt"], val["answer"]))
    scores = score_variants(situations, texts, [answers[s] for s in situations], variants, encoders)
    evaluator = load_enc(cfg.models.eval_encoder)
    sample_ids = [k % cfg.alignment.samples for k in range(len(texts))]
    frame = pd.DataFrame({"prompt": situations, "sample": sample_ids, "text": texts})
    frame["evaluator"] = evaluator_scores(val, situations, texts, evaluator, cfg.eval.sbert_thresholds[0])
    return pd.concat([frame, scores], axis=1)


def _settings(cfg: RunConfig, policy: str) -> dict[str, Any]:
    return {
        "policy": cfg.alignment.policy,
        "policy_path": policy,
        "samples": cfg.alignment.samples,
        "situations": cfg.alignment.rows,
        "sampling": _sampling(cfg),
        "estimator": cfg.reward.estimator,
        "evaluator": cfg.models.eval_encoder,
        "threshold": cfg.eval.sbert_thresholds[0],
        "variants": cfg.alignment.variants,
    }
