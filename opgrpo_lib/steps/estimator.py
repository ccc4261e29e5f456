"""Step 02: mine triplets from the training situations (a seeded held-out share kept apart), fine-tune the
similarity estimator (the reward's encoder), evaluate base vs fine-tuned."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..data import load_prepared
from ..device import resolve_device
from ..estimator import (
    RELEASED_FILES,
    LLMJudge,
    NameJudge,
    deviation,
    evaluate_estimators,
    finetune,
    judge_agreement,
    load_released_outputs,
    mine_triplets,
    released_path,
    training_outputs,
    triplet_accuracy,
)
from ..lifecycle import step_run
from ..reward import SentenceEncoder
from ..runs import RunPaths, atomic_write_parquet, atomic_write_text

SEPARATION_NOTE = (
    "cosine of (reference, released 3B output line) pairs of held-out training situations: matched = same "
    "perspective name; auc = P(matched pair > unmatched pair); mining view = masked explanations, reward "
    "view = what the reward compares. The base policy's own implicit outputs are not available offline "
    "(step 05 generates them for evaluation situations only), so outputs vs base-model outputs is not "
    "measured here."
)


def run(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any]:
    """Write ``<run>/estimator/`` (triplets, model) and ``results/estimator/`` (metrics, calibration,
    similarities). A rerun with the same settings is a no-op once finished (``force`` redoes it)."""
    res_dir = paths.results / "estimator"
    with step_run(cfg, paths, "estimator", force) as step:
        if step.done:
            return {
                "metrics": json.loads((res_dir / "metrics.json").read_text()),
                "skipped": True,
                "curves": pd.read_csv(res_dir / "calibration.csv"),
                "model": step.folder / "model",
            }
        ec, device = cfg.estimator, resolve_device(cfg)
        train, evaluation = load_prepared(paths.data)
        if ec.max_situations is not None:
            train = train.iloc[: ec.max_situations]
        held = train.sample(frac=ec.heldout_fraction, random_state=cfg.seed).sort_index()
        fit = train.drop(index=held.index)
        outputs, released_counts = None, None
        step.inputs = [paths.data / "train.parquet"]
        if ec.candidates == "released_outputs":  # training situations' output lines only (evaluation ones dropped)
            outputs, released_counts = training_outputs(load_released_outputs(cfg), train, evaluation)
            step.inputs += [released_path(name, cfg) for name in RELEASED_FILES.values()]
        base = SentenceEncoder(cfg.models.encoder, device=device, batch_size=cfg.reward.batch_size)
        judge = NameJudge() if ec.judge == "names" else LLMJudge(ec.judge_model, device, ec.judge_batch_size)
        out_dir = step.begin()  # every check passed: only now is an old run moved aside
        with step.timed("mine"):
            mine = dict(cross_situation=ec.cross_situation, outputs=outputs, output_threshold=ec.output_threshold)
            trip_fit, rep_fit = mine_triplets(fit, base, judge, ec.mining_threshold, **mine)
            trip_held, rep_held = mine_triplets(held, base, judge, ec.mining_threshold, **mine)
        leaked = (set(trip_fit["prompt"]) | set(trip_held["prompt"])) & set(evaluation["prompt"])
        if leaked:
            raise AssertionError(
                f"triplets mined from {len(leaked)} evaluation situations, e.g. {sorted(leaked)[0]!r}"
            )
        atomic_write_parquet(trip_fit, out_dir / "triplets_train.parquet")
        atomic_write_parquet(trip_held, out_dir / "triplets_heldout.parquet")
        agreement = None
        if ec.agreement_pairs and ec.judge == "names":
            with step.timed("agreement"):
                other = LLMJudge(ec.judge_model, device, ec.judge_batch_size)
                agreement = judge_agreement(fit, base, judge, other, ec.mining_threshold, ec.agreement_pairs)
                agreement["llm_judge_model"] = ec.judge_model
        with step.timed("finetune"):
            final = finetune(trip_fit, cfg.models.encoder, out_dir, cfg, device, resume=step.resuming)
        tuned = SentenceEncoder(str(final), device=device, batch_size=cfg.reward.batch_size)
        with step.timed("evaluate"):
            encoders = {"base": base, "fine-tuned": tuned}
            sims, curves, by_kind, separation = evaluate_estimators(cfg, encoders, trip_held, held, outputs)
        mining = {"train": rep_fit, "heldout": rep_held, "released": released_counts, "agreement": agreement}
        metrics = _metrics(cfg, mining, trip_fit, trip_held, sims, by_kind, separation)
        res_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(res_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
        atomic_write_text(res_dir / "calibration.csv", curves.to_csv(index=False))
        atomic_write_text(res_dir / "similarities.csv", sims.round(5).to_csv(index=False))
    return {"metrics": metrics, "curves": curves, "model": final}


def _metrics(
    cfg: RunConfig,
    mining: dict[str, Any],
    trip_fit: pd.DataFrame,
    trip_held: pd.DataFrame,
    sims: pd.DataFrame,
    by_kind: dict,
    separation: dict | None,
) -> dict[str, Any]:
    """``results/estimator/metrics.json``: the mining reports, triplet accuracies and separation."""
    ec = cfg.estimator
    return {
        "profile": cfg.profile,
        "base_model": cfg.models.encoder,
        "judge": ec.judge,
        "judge_model": ec.judge_model if ec.judge == "llm" else None,
        "scale": ec.scale,
        "mining_threshold": ec.mining_threshold,
        "candidates": ec.candidates,
        "output_threshold": ec.output_threshold,
        "cross_situation": ec.cross_situation,
        "released_outputs": mining["released"],
        "mining_train": mining["train"].__dict__,
        "mining_heldout": mining["heldout"].__dict__,
        "judge_agreement": mining["agreement"],
        "heldout_triplets": len(trip_held),
        "train_triplets": len(trip_fit),
        "triplet_accuracy_base": triplet_accuracy(sims[sims.model == "base"]),
        "triplet_accuracy_finetuned": triplet_accuracy(sims[sims.model == "fine-tuned"]),
        "triplet_accuracy_by_kind": by_kind,
        "separation_heldout": separation,
        "separation_note": None if separation is None else SEPARATION_NOTE,
        "deviation": deviation(ec, mining["train"]),
    }
