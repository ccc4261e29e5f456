"""The numbers the README's result paragraph quotes, computed from the committed ``results/<profile>/`` only.

    python scripts/result_facts.py [--profile cpu] [--results DIR]

Pooled 5p+10p means and paired differences (with their bootstrap CIs) under both evaluators, per-situation wins /
ties / losses of the reference system against every other system, output length, core lines per output and valid
layout per system, and the end of GRPO (KL, reward) and of the validation curve. No model, no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POOLED = ["5p", "10p"]


def facts(results: Path, reference: str = "op_grpo") -> dict:
    per = pd.read_parquet(results / "eval" / "sbert_per_sample.parquet")
    per = per[per["text"] != "summary"]
    comp = pd.read_csv(results / "eval" / "comparisons.csv")
    out: dict = {"situations_per_system": per[per["evaluator"] == "independent"].groupby("system").size().to_dict()}
    for evaluator, grp in per.groupby("evaluator"):
        pooled = grp[grp["split"].isin(POOLED)]
        out[f"pooled_mean_{evaluator}"] = pooled.groupby("system")["ratio"].mean().round(3).to_dict()
        wide = grp.pivot_table(index=["split", "prompt"], columns="system", values="ratio")
        out[f"wins_ties_losses_{evaluator}"] = {
            other: [int((wide[reference] > wide[other]).sum()), int((wide[reference] == wide[other]).sum()),
                    int((wide[reference] < wide[other]).sum())]
            for other in wide.columns if other != reference
        }  # fmt: skip
    pooled = comp[comp["split"] == "+".join(POOLED)]
    out["pooled_differences"] = [
        f"{r.system} - {r.baseline} ({r.evaluator}, n={r.n}): {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        for r in pooled.itertuples()
    ]
    lines = {}
    for f in sorted((results / "generations").glob("*.jsonl")):
        g = pd.read_json(f, lines=True)
        core = g["core"].fillna("").map(lambda t: sum(1 for line in t.splitlines() if line.strip()))
        lines[f.stem] = {"core_lines": round(float(core.mean()), 2),
                         "valid_layout": round(float(g["valid_format"].mean()), 3)}  # fmt: skip
    tok = pd.read_csv(results / "eval" / "metrics.csv").query("metric == 'tokens'")
    for system, grp in tok.groupby("system"):
        lines.setdefault(system, {})["mean_tokens"] = round(
            float((grp["mean_tokens"] * grp["n"]).sum() / grp["n"].sum()), 1
        )
    out["outputs"] = lines
    log = pd.read_csv(results / "train_log.csv")
    out["grpo_end"] = {"steps": int(log["step"].max()), "kl": round(float(log["kl"].iloc[-1]), 4),
                       "reward_first2": round(float(log["reward"].head(2).mean()), 3),
                       "reward_last2": round(float(log["reward"].tail(2).mean()), 3)}  # fmt: skip
    curve = results / "validation_curve.csv"
    if curve.exists():
        out["validation_curve"] = (
            pd.read_csv(curve)[["step", "sbert_relative_accuracy", "mean_tokens"]].round(3).to_dict("records")
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    print(json.dumps(facts(args.results or ROOT / "results" / args.profile), indent=1))


if __name__ == "__main__":
    main()
