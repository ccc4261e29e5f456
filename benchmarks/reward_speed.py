"""Reward speed: batched OP reward vs the per-rollout reference (authors' shape) vs bare encoding.

A realistic GRPO batch (default 16 prompts × 8 rollouts) is built from the authors' released OP-GRPO outputs
(test_5p) and scored with all-MiniLM-L6-v2 on the CPU. Prints a table, or one JSON object with --json.
Timings are min-of-N within one run (this machine's speed swings); only the ratios are meaningful.

    python benchmarks/reward_speed.py [--prompts 16] [--group 8] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the per-rollout reference implementation lives with the tests

import pandas as pd  # noqa: E402
from common import best_of, grpo_like_batch  # noqa: E402

from opgrpo_lib.models import resolve  # noqa: E402
from opgrpo_lib.reward import OPRewardScorer, SentenceEncoder, keyword_text_for  # noqa: E402
from opgrpo_lib.text import stopwords  # noqa: E402


def _print(r: dict) -> None:
    """The human-readable table of a result."""
    print(f"GRPO batch: {r['prompts']} prompts x {r['group']} rollouts from the released outputs, {r['model']}, CPU")
    print(f"{'implementation':<38}{'seconds':>10}{'sentences':>12}")
    print(
        f"{'per-rollout reference (authors shape)':<38}{r['reference_s']:>10.3f}{r['sentences_encoded_by_reference']:>12}"
    )
    print(f"{'batched (opgrpo_lib.reward)':<38}{r['batched_s']:>10.3f}{r['distinct_sentences_encoded']:>12}")
    print(f"{'bare encode of distinct sentences':<38}{r['encode_only_s']:>10.3f}{r['distinct_sentences_encoded']:>12}")
    print(f"speedup vs reference: {r['speedup_vs_reference']}x (target >= 5x)")
    print(f"batched / encode-only: {r['ratio_to_encode_only']}x (target <= 1.3x)")
    print(f"identical totals and components: {r['identical']}")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data"), help="folder with opv2/ and opv2-released-outputs/"
    )
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def main() -> None:
    import reference_reward as ref

    args = _args()

    data = Path(args.data)
    refs = pd.read_csv(data / "opv2" / "test_5p.csv", keep_default_na=False)
    outs = pd.read_csv(data / "opv2-released-outputs" / "grpo_eval_summaries_clean.csv", keep_default_na=False)
    frame = outs.merge(refs, on="prompt", how="inner")
    situations, completions, references = grpo_like_batch(frame, args.prompts, args.group, args.seed)
    kw_texts = [keyword_text_for(s) for s in situations]

    encoder = SentenceEncoder(resolve(args.model), device="cpu")
    scorer = OPRewardScorer(encoder)

    class Recorder:  # captures the distinct sentences the batched scorer encodes
        sentences: list[str] = []

        def encode(self, s):
            Recorder.sentences = list(s)
            return encoder.encode(s)

    OPRewardScorer(Recorder()).score(kw_texts, completions, references)
    distinct = Recorder.sentences
    encoder.encode(distinct)  # warm-up

    t_encode, _ = best_of(lambda: encoder.encode(distinct), args.repeats)
    t_batched, parts = best_of(lambda: scorer.score(kw_texts, completions, references), args.repeats)
    stop = stopwords()
    t_ref, ref_parts = best_of(
        lambda: [ref.score_one(encoder.encode, stop, k, c, r) for k, c, r in zip(kw_texts, completions, references)],
        max(1, args.repeats - 1),
    )
    keys = ("coverage", "uniqueness", "format", "tag", "total")
    identical = all(tuple(getattr(a, k) for k in keys) == tuple(b[k] for k in keys) for a, b in zip(parts, ref_parts))
    per_rollout_sentences = sum(
        len(ref.sentences(r)) + 2 * len(ref.sentences(ref.STRICT.match(c).group("core") if ref.STRICT.match(c) else c))
        for c, r in zip(completions, references)
    )
    result = {
        "model": args.model,
        "prompts": args.prompts,
        "group": args.group,
        "completions": len(completions),
        "distinct_sentences_encoded": len(distinct),
        "sentences_encoded_by_reference": per_rollout_sentences,
        "encode_only_s": round(t_encode, 4),
        "batched_s": round(t_batched, 4),
        "reference_s": round(t_ref, 4),
        "speedup_vs_reference": round(t_ref / t_batched, 2),
        "ratio_to_encode_only": round(t_batched / t_encode, 3),
        "identical": identical,
        "mean_total": round(sum(x.total for x in parts) / len(parts), 4),
    }
    if args.json:
        print(json.dumps(result))
        return
    _print(result)


if __name__ == "__main__":
    main()
