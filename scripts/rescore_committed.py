"""Re-score the committed generations of a profile and compare with its committed per-sample SBERT scores.

    python scripts/rescore_committed.py --profile cpu [--run-dir runs/cpu]

Reads only ``results/<profile>/generations/*.jsonl`` and OP-V2 (the evaluation situations are re-derived from the
profile's data settings), scores them with step 06's own code (``evaluate.score_outputs``) and compares every row of
``results/<profile>/eval/sbert_per_sample.parquet`` (matched, references, candidate sentences). The independent
evaluator is always re-scored; the reward's fine-tuned estimator only with ``--run-dir`` (its weights are not
committed). Where the profile ran the prompt-style test, its English outputs (``results/<profile>/styles/
generations.jsonl``) are re-scored the same way and every row of ``per_sample.csv`` compared, and ``summary.csv``,
``comparisons.csv`` and ``verdicts.csv`` are recomputed from the re-scored rows. Exit 1 when anything differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["system", "split", "prompt", "threshold", "text", "evaluator"]
VALUES = ["matched", "n_references", "n_candidate_sentences"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results", type=Path, help="default: results/<profile>")
    ap.add_argument("--run-dir", type=Path, help="a run folder with the fine-tuned estimator (step 02)")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from opgrpo_lib.config import load_profile
    from opgrpo_lib.data import prepare
    from opgrpo_lib.evaluate import Evaluators, score_outputs
    from opgrpo_lib.models import resolve, resolve_estimator
    from opgrpo_lib.reward import CachedEncoder, SentenceEncoder
    from opgrpo_lib.runs import run_paths

    cfg = load_profile(args.profile)
    results = args.results or ROOT / "results" / args.profile
    gen_files = sorted((results / "generations").glob("*.jsonl"))
    if not gen_files:
        print(f"error: no generations under {results / 'generations'}", file=sys.stderr)
        return 2
    outputs = pd.concat([pd.read_json(f, lines=True) for f in gen_files], ignore_index=True)
    committed = pd.read_parquet(results / "eval" / "sbert_per_sample.parquet")
    ev = prepare(cfg).eval
    estimator = None
    if args.run_dir:
        estimator = SentenceEncoder(
            resolve_estimator(cfg, run_paths(cfg, args.run_dir)), batch_size=cfg.reward.batch_size
        )
    else:
        committed = committed[committed["evaluator"] == "independent"]
    encoder = CachedEncoder(SentenceEncoder(cfg.models.eval_encoder, batch_size=cfg.reward.batch_size))
    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.models.tokenizer))
    evs = Evaluators(encoder, tokenizer, None, "not re-scored", estimator)
    _, fresh, _ = score_outputs(cfg, outputs, ev, evs, {})
    both, same = _row_match(committed, fresh, KEYS, VALUES)
    for evaluator, grp in both.groupby("evaluator"):
        ok = int(same[grp.index].sum())
        print(
            f"{evaluator}: {ok} of {len(grp)} per-sample rows re-score exactly "
            f"({len(gen_files)} systems, {outputs['prompt'].nunique()} situations)"
        )
    status = 0
    if not same.all():
        print(both[~same][KEYS + [f"{v}_{s}" for v in VALUES for s in ("committed", "rescored")]].head(20))
        status = 1
    if (results / "styles" / "per_sample.csv").exists():
        status = max(status, rescore_styles(cfg, results / "styles", ev, encoder))
    return status


def rescore_styles(cfg, folder: Path, ev: pd.DataFrame, encoder) -> int:
    """The prompt-style test's English rows re-scored with the step's code, then its tables recomputed."""
    from opgrpo_lib import styles as st

    outputs = pd.read_json(folder / "generations.jsonl", lines=True)
    order = [c for c in st.conditions(cfg) if c.language == "en"]
    outputs = outputs[outputs["condition"].isin({c.label for c in order})]
    columns = {s.name: s.score_column for s in st.systems(cfg)}
    refs = ev[ev["prompt"].isin(set(outputs["prompt"]))]
    fresh = st.per_sample(outputs, refs, encoder, cfg.eval.sbert_thresholds[0], columns)
    committed = pd.read_csv(folder / "per_sample.csv")
    committed = committed[committed["condition"].isin({c.label for c in order})]
    both, same = _row_match(committed, fresh, ["condition", "system", "prompt"], ["matched", "n_references"])
    print(f"styles: {int(same.sum())} of {len(both)} per-sample rows re-score exactly ({len(order)} conditions)")
    summary, comps = st.tables(fresh, order, cfg)
    verdicts = st.verdicts(summary, comps, cfg.styles.systems[0], *st.baselines(cfg))
    tables = {"summary": summary, "comparisons": comps, "verdicts": verdicts}
    ok = bool(same.all())
    for name, table in tables.items():
        saved = pd.read_csv(folder / f"{name}.csv")
        saved = saved[saved["language"] == "en"].reset_index(drop=True) if "language" in saved else saved
        equal = _same_table(saved, table.reset_index(drop=True))
        print(f"styles/{name}.csv: {'recomputed exactly' if equal else 'DIFFERS'} ({len(saved)} rows)")
        ok &= equal
    return 0 if ok else 1


def _row_match(committed: pd.DataFrame, fresh: pd.DataFrame, keys: list[str], values: list[str]):
    """(the outer join of both on ``keys``, True where a row is on both sides with equal ``values``)."""
    both = committed.merge(fresh, on=keys, how="outer", suffixes=("_committed", "_rescored"), indicator=True)
    same = both["_merge"] == "both"
    for v in values:
        same &= both[f"{v}_committed"] == both[f"{v}_rescored"]
    return both, same


def _same_table(saved: pd.DataFrame, fresh: pd.DataFrame) -> bool:
    """Equal columns of the committed table and its recomputation: numbers to 1e-9, the rest exactly."""
    if len(saved) != len(fresh):
        return False
    for col in saved.columns.intersection(fresh.columns):
        a, b = saved[col], fresh[col]
        numeric = [pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x) for x in (a, b)]
        if all(numeric):
            if not ((a - b).abs().le(1e-9) | (a.isna() & b.isna())).all():
                return False
        elif not (a.astype(str) == b.astype(str)).all():
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
