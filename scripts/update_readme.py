"""Regenerate the README's results block from the committed results/<profile>/ files.

python scripts/update_readme.py [--profile cpu] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from opgrpo_lib.figures import main_coverage_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _manifest(results: Path, step: str) -> dict[str, Any]:
    path = results / "manifests" / f"{step}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _hardware(m: dict[str, Any]) -> str:
    dev = m.get("device", {})
    if not dev:
        return "–"
    return dev.get("gpu") or f"CPU, {dev.get('cpus')} cores"


def _minutes(m: dict[str, Any]) -> str:
    total = sum((m.get("timings_s") or {}).values())
    if m.get("step") == "05_generate" and 0 < total < 60:  # every row matched its fingerprint: nothing generated
        return "rows reused (same key)"
    return f"{total / 60:.1f} min" if total else "–"


def comparison_rows(results: Path, pooled: str = "5p+10p") -> list[str]:
    """The headline: paired bootstrap differences on the pooled 5p+10p situations, under the independent evaluator
    and under the reward's own estimator, side by side."""
    path = results / "eval" / "comparisons.csv"
    if not path.exists():
        return []
    comp = pd.read_csv(path)
    comp = comp[(comp["split"] == pooled) & (comp["metric"] == "sbert")]
    rows = []
    for (system, baseline), part in comp.groupby(["system", "baseline"], sort=False):
        cells = []
        for evaluator in ("independent", "estimator"):
            r = part[part["evaluator"] == evaluator]
            if not r.empty:
                r = r.iloc[0]
                cells.append(f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        n = int(part["n"].iloc[0])
        rows.append(
            f"| {system} − {baseline}, SBERT relative accuracy, pooled {pooled} (n = {n} paired situations), "
            f"95 % paired-bootstrap CI: independent / reward's estimator | {' / '.join(cells)} | `06_evaluate` "
            f"(`eval/comparisons.csv`) | – | – |"
        )
    return rows


def readme_results_table(results: Path) -> str:
    """The README's results table, rendered from the committed ``results/<profile>/`` files only."""
    profile = results.name
    rows = ["| result | value | produced by | hardware | time |", "|---|---|---|---|---|"]
    est_path = results / "estimator" / "metrics.json"
    if est_path.exists():
        est = json.loads(est_path.read_text())
        m = _manifest(results, "02_estimator")
        rows.append(
            f"| estimator held-out triplet accuracy, base → fine-tuned ({est['base_model'].split('/')[-1]}, "
            f"{est['judge']} judge, n = {est['heldout_triplets']}) | {est['triplet_accuracy_base']:.3f} → "
            f"{est['triplet_accuracy_finetuned']:.3f} | `02_similarity_estimator` / `opgrpo estimator --profile {profile}` "
            f"| {_hardware(m)} | {_minutes(m)} |"
        )
    log_path = results / "train_log.csv"
    if log_path.exists():
        log = pd.read_csv(log_path)
        k = max(1, min(5, len(log) // 3))
        first, last = log["op_reward/total"].iloc[:k].mean(), log["op_reward/total"].iloc[-k:].mean()
        m = _manifest(results, "04_grpo")
        rows.append(
            f"| GRPO training reward, mean of first → last {k} of {len(log)} steps | {first:.3f} → {last:.3f} | "
            f"`04_op_grpo` / `opgrpo train --profile {profile}` | {_hardware(m)} | {_minutes(m)} |"
        )
    met_path = results / "eval" / "metrics.csv"
    if met_path.exists():
        table = main_coverage_table(pd.read_csv(met_path))
        m = _manifest(results, "06_evaluate")
        g = _manifest(results, "05_generate")
        summary = json.loads((results / "eval" / "eval_summary.json").read_text())
        for system, part in table.groupby("system", observed=True, sort=False):
            rows.append(
                f"| {system}: SBERT relative / absolute accuracy @ {table.attrs['threshold']} "
                f"({summary['eval_encoder'].split('/')[-1]}), mean over {part['split'].nunique()} splits, "
                f"n = {int(part['n'].sum())} | {part['relative_accuracy'].mean():.3f} / {part['absolute_accuracy'].mean():.3f} "
                f"| `05_generate` + `06_evaluate` | {_hardware(g)} | {_minutes(g)} + {_minutes(m)} |"
            )
        rows += comparison_rows(results)
        rows.append(f"| NLI Accuracy@0.33 | {summary['nli']} | `06_evaluate` | – | – |")
        rows.append(f"| format retries at generation | {summary['retries']} | profile `generate.retries` | – | – |")
    if len(rows) == 2:
        rows.append(f"| (no committed results for {profile} yet) | – | `make reproduce PROFILE={profile}` | – | – |")
    return "\n".join(rows)


def block(profile: str) -> str:
    return f"{START}\n{readme_results_table(ROOT / 'results' / profile)}\n{END}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="cpu")
    p.add_argument("--check", action="store_true", help="fail if the README is out of date")
    args = p.parse_args()
    readme = (ROOT / "README.md").read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block(args.profile), readme, flags=re.S)
    if args.check:
        if new == readme:
            return 0
        old_rows = set(readme.splitlines()) - set(new.splitlines())
        new_rows = set(new.splitlines()) - set(readme.splitlines())
        print(
            f"README.md's results block differs from results/{args.profile}/ (run: python scripts/update_readme.py):"
        )
        for line in sorted(old_rows):
            print(f"  README:  {line}")
        for line in sorted(new_rows):
            print(f"  results: {line}")
        return 1
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
