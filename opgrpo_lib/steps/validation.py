"""The validation steps: greedy outputs of a trained policy on the held-out validation situations, scored by the
reward and by the independent evaluator. Their own module (not ``steps.sft`` / ``steps.grpo``), so a change of the
scoring code or of an evaluation setting re-scores the saved policies and never retrains them."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..config import ConfigError, RunConfig, trl_value
from ..data import load_validation
from ..device import resolve_device
from ..lifecycle import rank0, step_run
from ..lm import policy_identity, resolve_policy
from ..models import resolve, resolve_estimator
from ..runs import RunPaths, atomic_write_text, checkpoint_problem
from ..validation import score_policies, versus_start


def sft(cfg: RunConfig, paths: RunPaths, force: bool = False) -> dict[str, Any] | None:
    """Step ``sft_validation`` (notebook 03, after ``sft``): does the saved SFT policy finish the layout within
    GRPO's completion budget? Greedy outputs on the validation situations -> ``results/sft_validation.json``. The
    reward uses the base encoder (``models.encoder``) when GRPO's would be step 02's estimator: this point does not
    wait for step 02."""
    if not cfg.train.validation_every or not rank0():  # one process's job in a torchrun job
        return None
    out_json = paths.results / "sft_validation.json"
    with step_run(cfg, paths, "sft_validation", force) as step:
        if step.done and out_json.exists():
            return json.loads(out_json.read_text())
        policy = resolve_policy("run:sft", cfg, paths.root)
        if load_validation(paths.data).empty:
            raise ConfigError("train.validation_every needs validation situations: set data.validation_situations")
        step.begin()
        estimator = cfg.models.encoder if cfg.reward.estimator == "run:estimator" else resolve(cfg.reward.estimator)
        with step.timed("validation"):
            (point,) = score_policies(cfg, paths, [(0, policy)], estimator, resolve_device(cfg))
        point.pop("per_situation")
        note = "base encoder (models.encoder): step 02 may not have run"
        record = {**point, "reward_estimator": note, "policy": policy_identity("run:sft", cfg)}
        atomic_write_text(out_json, json.dumps(record, indent=2))
    return record


def _checkpoints(cfg: RunConfig, paths: RunPaths) -> list[tuple[int, str]]:
    """(step, policy) of the validation curve: the init policy at step 0, then every ``train.validation_every``-th
    checkpoint and the last one. A damaged checkpoint is named up front, not a loader traceback halfway through."""
    every = cfg.train.validation_every
    found = sorted((paths.root / "grpo" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    last = int(found[-1].name[11:]) if found else 0
    points = [(0, resolve_policy(cfg.train.init, cfg, paths.root))]
    for ckpt in found:
        n = int(ckpt.name[11:])
        if n % every and n != last:
            continue
        problem = checkpoint_problem(ckpt)
        if problem:
            raise ValueError(f"GRPO checkpoint {ckpt}: {problem}; retrain step 04 (opgrpo grpo --force)")
        points.append((n, str(ckpt)))
    return points


def _sft_outputs(cfg: RunConfig, paths: RunPaths) -> dict[int, dict[str, list]]:
    """Step 0's greedy outputs when step 0 is the SFT policy that ``sft_validation`` already ran (same policy, same
    budget): generating them again would give the same texts."""
    found = paths.results / "sft_validation.json"
    if cfg.train.init != "run:sft" or not found.exists():
        return {}
    rec = json.loads(found.read_text())
    budget = trl_value(cfg.train.grpo, "grpo", "max_completion_length")
    same = rec.get("policy") == policy_identity("run:sft", cfg) and rec.get("max_new_tokens") == budget
    return {0: rec["outputs"]} if same and "outputs" in rec else {}


def grpo(cfg: RunConfig, paths: RunPaths, force: bool = False) -> pd.DataFrame | None:
    """Step ``grpo_validation`` (notebook 04, after ``grpo``): greedy outputs of the init policy and of GRPO's
    checkpoints on the validation situations, scored by the reward and the independent evaluator ->
    ``results/validation_curve.csv``."""
    if not cfg.train.validation_every or not rank0():  # one process's job in a torchrun job
        return None
    out_csv = paths.results / "validation_curve.csv"
    with step_run(cfg, paths, "grpo_validation", force) as step:
        if step.done and out_csv.exists():
            return pd.read_csv(out_csv)
        policies = _checkpoints(cfg, paths)
        step.begin()
        with step.timed("validation"):
            estimator, device = resolve_estimator(cfg, paths), resolve_device(cfg)
            points = score_policies(cfg, paths, policies, estimator, device, _sft_outputs(cfg, paths))
        points = versus_start(points, cfg.seed)
        curve = pd.DataFrame(points).drop(columns="max_new_tokens")
        atomic_write_text(out_csv, curve.to_csv(index=False))
    return curve
