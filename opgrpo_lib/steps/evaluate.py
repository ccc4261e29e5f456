"""Step 06: SBERT coverage (core and summary text), NLI Overton accuracy (or a plain statement that it was
skipped), token efficiency, paired comparisons and the optional LLM judge, for every generated system."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..data import load_prepared
from ..evaluate import checkpoint_coverage, load_evaluators, paired_comparisons, run_judge, score_outputs
from ..lifecycle import step_run
from ..runs import RunPaths, atomic_write_parquet, atomic_write_text


def run(cfg: RunConfig, paths: RunPaths, progress: bool = True) -> dict[str, Any]:
    """Per-sample parquet and aggregate tables under ``<run>/results/eval/``."""
    results = paths.results / "eval"
    with step_run(cfg, paths, "evaluate") as step:
        outputs = pd.read_parquet(paths.root / "generate" / "outputs.parquet")
        _, ev = load_prepared(paths.data)
        step.begin()
        with step.timed("load_models"):
            evs = load_evaluators(cfg, paths)
        metrics, sbert_per, nli_per = score_outputs(cfg, outputs, ev, evs, step.timings, progress)
        comparisons = paired_comparisons(
            sbert_per, nli_per, cfg.eval.reference_system, cfg.eval.bootstrap_reps, cfg.seed
        )
        judge = run_judge(cfg, paths, outputs, ev) if cfg.eval.judge.enabled else {"status": "disabled"}
        if cfg.eval.checkpoint_rows_per_split:
            with step.timed("checkpoints"):
                ckpt = checkpoint_coverage(cfg, paths, ev, evs.encoder, progress)
            atomic_write_text(results / "checkpoint_coverage.csv", ckpt.to_csv(index=False))
        atomic_write_parquet(sbert_per, results / "sbert_per_sample.parquet")
        if len(nli_per):
            atomic_write_parquet(nli_per, results / "nli_per_sample.parquet")
        made = {
            "checkpoint_coverage.csv": bool(cfg.eval.checkpoint_rows_per_split),
            "nli_per_sample.parquet": len(nli_per) > 0,
            "judge_per_sample.parquet": judge.get("scored", 0) > 0,
        }
        for name, made_now in made.items():  # a feature switched off (or with nothing to score) leaves no old file
            if not made_now:
                (results / name).unlink(missing_ok=True)
        atomic_write_text(results / "metrics.csv", metrics.to_csv(index=False))
        atomic_write_text(results / "comparisons.csv", comparisons.to_csv(index=False))
        summary = _summary(cfg, evs.nli_status, judge)
        atomic_write_text(results / "eval_summary.json", json.dumps(summary, indent=2, default=str))
        step.inputs = [paths.root / "generate" / "outputs.parquet"]
    return {"summary": summary, "metrics": metrics, "comparisons": comparisons}


def _summary(cfg: RunConfig, nli_status: str, judge: dict[str, Any]) -> dict[str, Any]:
    """``results/eval/eval_summary.json``: what was scored with what."""
    estimator = (
        cfg.reward.estimator
        if cfg.reward.estimator != "run:estimator"
        else f"{cfg.models.encoder} fine-tuned (step 02)"
    )
    return {
        "profile": cfg.profile,
        "eval_encoder": cfg.models.eval_encoder,
        "reward_estimator": estimator,
        "eval_encoder_is_reward_estimator": cfg.models.eval_encoder in (estimator, cfg.reward.estimator),
        "sbert_thresholds": cfg.eval.sbert_thresholds,
        "nli": nli_status,
        "nli_text": cfg.eval.nli_text,
        "retries": cfg.generate.retries,
        "tokenizer": cfg.models.tokenizer,
        "judge": judge,
        "data_label": "offline carve of the test set" if cfg.data.train_source == "carve" else "published splits",
    }
