"""The numbers the README's result paragraphs quote, computed from a results folder only.

    python scripts/result_facts.py [--profile cpu] [--results DIR]

Pooled 5p+10p means and paired differences (with their bootstrap CIs, paired SD and minimum detectable effect)
under both evaluators, per-situation wins / ties / losses of the reference system against every other system,
output length, core lines per output and valid layout per system, the end of GRPO and of the validation curve, the
alignment check, the prompt-style verdicts, the authors' re-scoring and each step's time and peak memory from its
manifest. No model, no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POOLED = ["5p", "10p"]


def _wins(wide: pd.DataFrame, reference: str) -> dict[str, list[int]]:
    """Per other system: situations where ``reference`` scores higher, the same, lower."""
    out = {}
    for other in (c for c in wide.columns if c != reference):
        pair = wide[[reference, other]].dropna()
        diff = pair[reference] - pair[other]
        out[other] = [int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())]
    return out


def evaluation(results: Path, reference: str = "op_grpo") -> dict[str, Any]:
    """Pooled means, wins / ties / losses and the pooled paired differences of step 06."""
    per = pd.read_parquet(results / "eval" / "sbert_per_sample.parquet")
    per = per[per["text"] != "summary"]
    out: dict[str, Any] = {
        "situations_per_system": per[per["evaluator"] == "independent"].groupby("system").size().to_dict()
    }
    for evaluator, grp in per.groupby("evaluator"):
        pooled = grp[grp["split"].isin(POOLED)]
        out[f"pooled_mean_{evaluator}"] = pooled.groupby("system")["ratio"].mean().round(3).to_dict()
        wide = grp.pivot_table(index=["split", "prompt"], columns="system", values="ratio")
        out[f"wins_ties_losses_{evaluator}"] = _wins(wide, reference)
    comp = pd.read_csv(results / "eval" / "comparisons.csv")
    out["pooled_differences"] = [
        f"{r.system} - {r.baseline} ({r.evaluator}, n={r.n}): {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        f" sd {getattr(r, 'sd_diff', float('nan')):.3f} mde {getattr(r, 'mde_80', float('nan')):.3f}"
        for r in comp[comp["split"] == "+".join(POOLED)].itertuples()
    ]
    return out


def outputs(results: Path) -> dict[str, dict[str, float]]:
    """Core lines, valid layout and mean tokens per system."""
    lines: dict[str, dict[str, float]] = {}
    for f in sorted((results / "generations").glob("*.jsonl")):
        g = pd.read_json(f, lines=True)
        core = g["core"].fillna("").map(lambda t: sum(1 for line in t.splitlines() if line.strip()))
        lines[f.stem] = {
            "core_lines": round(float(core.mean()), 2),
            "valid_layout": round(float(g["valid_format"].mean()), 3),
        }
    tok = pd.read_csv(results / "eval" / "metrics.csv").query("metric == 'tokens'")
    for system, grp in tok.groupby("system"):
        mean = (grp["mean_tokens"] * grp["n"]).sum() / grp["n"].sum()
        lines.setdefault(system, {})["mean_tokens"] = round(float(mean), 1)
    return lines


def training(results: Path) -> dict[str, Any]:
    """The end of GRPO, the validation curve and the SFT validation point."""
    log = pd.read_csv(results / "train_log.csv")
    out: dict[str, Any] = {
        "grpo_end": {
            "steps": int(log["step"].max()),
            "kl": round(float(log["kl"].iloc[-1]), 4),
            "reward_first2": round(float(log["reward"].head(2).mean()), 3),
            "reward_last2": round(float(log["reward"].tail(2).mean()), 3),
        }
    }
    curve = results / "validation_curve.csv"
    if curve.exists():
        out["validation_curve"] = pd.read_csv(curve).round(3).to_dict("records")
    sft = results / "sft_validation.json"
    if sft.exists():
        out["sft_validation"] = {k: v for k, v in json.loads(sft.read_text()).items() if k != "outputs"}
    return out


def _csv(path: Path) -> list[dict[str, Any]] | None:
    return pd.read_csv(path).round(3).to_dict("records") if path.exists() else None


def studies(results: Path) -> dict[str, Any]:
    """The alignment check, the prompt-style test and the authors' re-scoring, as written."""
    styles = results / "styles"
    return {
        "alignment": _csv(results / "alignment" / "summary.csv"),
        "styles_summary": _csv(styles / "summary.csv"),
        "styles_comparisons": _csv(styles / "comparisons.csv"),
        "styles_verdicts": _csv(styles / "verdicts.csv"),
        "authors_rescore_claims": _csv(results / "authors" / "rescore_claims.csv"),
    }


def stages(results: Path) -> dict[str, dict[str, Any]]:
    """Per manifest: minutes per timed stage, total, peak RSS and the commit that made it."""
    out = {}
    for f in sorted((results / "manifests").glob("*.json")):
        m = json.loads(f.read_text())
        timings = m.get("timings_s") or {}
        out[f.stem] = {
            "minutes": {k: round(v / 60, 2) for k, v in timings.items()},
            "total_min": round(sum(timings.values()) / 60, 2),
            "peak_rss_gb": (m.get("device") or {}).get("peak_rss_gb"),
            "git": m.get("git"),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results", type=Path)
    ap.add_argument("--only", choices=["evaluation", "outputs", "training", "studies", "stages"], nargs="*")
    args = ap.parse_args()
    results = args.results or ROOT / "results" / args.profile
    parts = {"evaluation": evaluation, "outputs": outputs, "training": training, "studies": studies, "stages": stages}
    chosen = args.only or list(parts)
    print(json.dumps({name: parts[name](results) for name in chosen}, indent=1, default=str))


if __name__ == "__main__":
    main()
