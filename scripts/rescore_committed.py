"""Re-score the committed generations of a profile and compare with its committed per-sample SBERT scores.

    python scripts/rescore_committed.py --profile cpu [--run-dir runs/cpu]

Reads only ``results/<profile>/generations/*.jsonl`` and OP-V2 (the evaluation situations are re-derived from the
profile's data settings), scores them with step 06's own code (``evaluate.score_outputs``) and compares every row of
``results/<profile>/eval/sbert_per_sample.parquet`` (matched, references, candidate sentences). The independent
evaluator is always re-scored; the reward's fine-tuned estimator only with ``--run-dir`` (its weights are not
committed). Exit 1 when any row differs or is missing.
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
    from opgrpo_lib.reward import SentenceEncoder
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
    evs = Evaluators(
        SentenceEncoder(cfg.models.eval_encoder, batch_size=cfg.reward.batch_size),
        AutoTokenizer.from_pretrained(resolve(cfg.models.tokenizer)),
        None, "not re-scored", estimator,
    )  # fmt: skip
    _, fresh, _ = score_outputs(cfg, outputs, ev, evs, {})
    both = committed.merge(fresh, on=KEYS, how="outer", suffixes=("_committed", "_rescored"), indicator=True)
    missing = both[both["_merge"] != "both"]
    same = both["_merge"] == "both"
    for v in VALUES:
        same &= both[f"{v}_committed"] == both[f"{v}_rescored"]
    differ = both[(both["_merge"] == "both") & ~same]
    for evaluator, grp in both.groupby("evaluator"):
        ok = int(same[grp.index].sum())
        print(
            f"{evaluator}: {ok} of {len(grp)} per-sample rows re-score exactly "
            f"({len(gen_files)} systems, {outputs['prompt'].nunique()} situations)"
        )
    if len(missing) or len(differ):
        print(both[~same][KEYS + [f"{v}_{s}" for v in VALUES for s in ("committed", "rescored")]].head(20))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
