"""The table of GRPO settings tried on the validation carve: one row per (setting, validation point), collected
from the run folders of the tried settings (their ``grpo/fingerprint.json`` says what was run, their
``results/validation_curve.csv`` what it gave). Settings are chosen on this table, never on the evaluation split.

Not a pipeline step: a sweep is a handful of hand-started ``opgrpo grpo --run-dir ... --set ...`` runs (README,
"Choosing the cpu settings"); ``scripts/validation_sweep.py`` writes the table into the chosen run's
``results/sweep/`` so that ``opgrpo publish`` commits it with the numbers it led to."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

# the settings a row reports (train.grpo keys; reward weights are reported as a whole)
SETTING_KEYS = (
    "learning_rate",
    "beta",
    "num_generations",
    "per_device_train_batch_size",
    "max_steps",
    "max_completion_length",
    "temperature",
    "mask_truncated_completions",
    "loss_type",
    "scale_rewards",
    "epsilon_high",
    "num_iterations",
)
REWARD_KEYS = ("weights", "mask", "mask_references", "agree_with", "overlong_cache")  # reported as reward_<key>


def run_settings(run_dir: Path) -> dict:
    """What a GRPO run was made with, from its fingerprint (the inputs behind its provenance key)."""
    fp = Path(run_dir) / "grpo" / "fingerprint.json"
    if not fp.exists():
        raise FileNotFoundError(f"{fp}: not a GRPO run folder (run `opgrpo grpo --run-dir {run_dir}` first)")
    rec = json.loads(fp.read_text())
    conf = rec["inputs"]["config"]
    grpo = conf["train.grpo"]
    out = {k: grpo.get(k) for k in SETTING_KEYS}
    out["mask_truncated_completions"] = bool(out["mask_truncated_completions"])  # TRL's default: False
    out["prompts_per_step"] = grpo["per_device_train_batch_size"] // grpo["num_generations"]
    out["lora"] = bool(conf["train.lora"]["enabled"])
    for k in REWARD_KEYS:  # a list (the encoders a match must agree under) as one cell: "a+b", "" for none
        value = conf["reward"].get(k)
        out[f"reward_{k}"] = "+".join(map(str, value)) if isinstance(value, list) else value
    out["status"] = rec["status"]
    out["grpo_key"] = rec["key"]
    out["sft_key"] = rec["inputs"]["upstream"].get("sft")
    return out


def collect(runs: dict[str, Path], chosen: str | None = None) -> pd.DataFrame:
    """``runs``: setting name -> run folder. Rows: every validation point of every run, with the run's settings.
    All runs must start from the same SFT policy and score the same validation situations (else the curves are not
    comparable and this raises)."""
    if chosen is not None and chosen not in runs:
        raise ValueError(f"--chosen {chosen!r} is not one of the settings {sorted(runs)}")
    frames = []
    for name, run_dir in runs.items():
        settings = run_settings(run_dir)
        curve_csv = Path(run_dir) / "results" / "validation_curve.csv"
        if not curve_csv.exists():
            raise FileNotFoundError(f"{curve_csv}: the run has no validation curve (set train.validation_every)")
        curve = pd.read_csv(curve_csv)  # the columns of validation.Validator.score
        log_csv = Path(run_dir) / "results" / "train_log.csv"
        if log_csv.exists():  # how far the policy moved and how long training outputs got, up to each point
            log = pd.read_csv(log_csv)
            for col, out in (("kl", "train_kl"), ("completions/clipped_ratio", "train_clipped_ratio")):
                if col in log:
                    curve[out] = [
                        log.loc[log["step"] <= s, col].iloc[-1] if (log["step"] <= s).any() else 0.0
                        for s in curve["step"]
                    ]
        frames.append(curve.assign(setting=name, **settings, chosen=name == chosen))
    table = pd.concat(frames, ignore_index=True)
    for col, what in (("sft_key", "SFT policy"), ("n", "number of validation situations")):
        if table[col].nunique() > 1:
            raise ValueError(f"the runs differ in their {what} ({col}): their validation curves are not comparable")
    first = ["setting", "chosen", "step", "sbert_relative_accuracy", "coverage_ladder", "mean_reward"]
    return table[first + [c for c in table.columns if c not in first]]


def best_points(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting: its final point and its best point under the independent evaluator."""
    rows = []
    for name, part in table.groupby("setting", sort=False):
        part = part.sort_values("step")
        final, best = part.iloc[-1], part.loc[part["sbert_relative_accuracy"].idxmax()]
        rows.append(
            {
                "setting": name,
                "chosen": bool(part["chosen"].iloc[0]),
                "steps": int(final["step"]),
                "final_sbert": final["sbert_relative_accuracy"],
                "final_ladder": final["coverage_ladder"],
                "final_tokens": final["mean_tokens"],
                "final_clipped": final["clipped_ratio"],
                "final_valid": final["valid_format_rate"],
                "final_train_kl": final.get("train_kl"),
                "best_step": int(best["step"]),
                "best_sbert": best["sbert_relative_accuracy"],
                **{k: final.get(k) for k in ("vs_start", "vs_start_ci_low", "vs_start_ci_high", "vs_start_mde_80")},
            }
        )
    return pd.DataFrame(rows)
