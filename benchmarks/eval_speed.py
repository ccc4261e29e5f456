"""Evaluator speed: batched SBERT coverage and NLI (across situations, each distinct input once) vs one call per
situation, on the same inputs (the authors' released test_5p outputs); and step 06's scoring of one split for
several systems and texts with every distinct sentence encoded once up front vs once per (system, text).
CPU; min-of-N timings; ratios only.

    python benchmarks/eval_speed.py [--rows 100] [--sbert-model sentence-transformers/all-MiniLM-L6-v2]
                                    [--nli-model tiny:nli] [--json]

No NLI weights exist offline, so the NLI part runs the protocol with the tiny in-code classifier by default; pass
--nli-model microsoft/deberta-v2-xlarge-mnli where the hub is reachable.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import best_of  # noqa: E402

from opgrpo_lib.evaluate import (  # noqa: E402
    CachedEncoder,
    join_candidates,
    nli_overton,
    sbert_coverage,
    sbert_sentences,
    situation_score,
    split_output_sentences,
)
from opgrpo_lib.nli import NLIModel  # noqa: E402
from opgrpo_lib.reward import SentenceEncoder, greedy_matches  # noqa: E402
from opgrpo_lib.text import eval_candidate_sentences, eval_reference_sentences, parse_perspectives  # noqa: E402


def sbert_per_situation(refs, cands, encoder, threshold):
    ratios = []
    for answer, cand in zip(refs["answer"], cands):
        r, c = eval_reference_sentences(answer), eval_candidate_sentences(cand)
        sim = encoder.encode(r).astype(np.float64) @ encoder.encode(c).astype(np.float64).T
        ratios.append(greedy_matches(sim, threshold) / len(r))
    return ratios


def nli_per_situation(refs, cands, model):
    scores = []
    for answer, cand in zip(refs["answer"], cands):
        expl = [e for _, e in parse_perspectives(answer)]
        sents = split_output_sentences(cand)
        prem = [e for e in expl for _ in sents]
        hyp = [s for _ in expl for s in sents]
        probs = model.entailment(prem, hyp).reshape(len(expl), len(sents))
        scores.append(situation_score(probs))
    return scores


def step06_scoring(refs, texts, encoder, threshold, cached):
    """One split's SBERT coverage for each candidate list, as step 06 scores it (``cached``) or without the cache."""
    if cached:
        encoder = CachedEncoder(encoder)
        cands = pd.DataFrame({f"t{i}": t for i, t in enumerate(texts)})
        encoder.encode(sbert_sentences([(refs, cands, list(cands.columns))]))
    return [sbert_coverage(refs, t, encoder, threshold)[0]["ratio"].tolist() for t in texts]


def _print(result: dict) -> None:
    """The human-readable table of ``result``."""
    refs_n = result["rows"]
    print(f"{refs_n} situations of test_5p, released OP-GRPO outputs (core for SBERT, summary for NLI), CPU")
    print(f"{'evaluator':<10}{'batched s':>11}{'per-situation s':>17}{'speedup':>9}  identical")
    for key in ("sbert", "nli"):
        r = result[key]
        print(f"{key:<10}{r['batched_s']:>11.3f}{r['per_situation_s']:>17.3f}{r['speedup']:>8.2f}x  {r['identical']}")
    r = result["step06"]
    print(
        f"step 06, {r['texts']} texts on the same references: encode once {r['encode_once_s']:.3f} s, per text "
        f"{r['per_text_s']:.3f} s, speedup {r['speedup']:.2f}x, identical {r['identical']}"
    )
    print(
        f"overall speedup vs one call per situation: {result['speedup_vs_per_situation']}x; identical: {result['identical']}"
    )
    print(
        "NLI scores compared with tolerance 1e-6 (padding differs between batchings); Accuracy@0.33 decisions must match."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--sbert-model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--nli-model", default="tiny:nli")
    p.add_argument("--threshold", type=float, default=0.70)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    data = Path(args.data)
    refs = pd.read_csv(data / "opv2" / "test_5p.csv", keep_default_na=False).iloc[: args.rows]
    outs = pd.read_csv(data / "opv2-released-outputs" / "grpo_eval_summaries_clean.csv", keep_default_na=False)
    core = join_candidates(refs, outs, "answer_p")
    summary = join_candidates(refs, outs, "answers")

    enc = SentenceEncoder(args.sbert_model, device="cpu")
    enc.encode(["warm-up"])
    t_sb, (per, _) = best_of(lambda: sbert_coverage(refs, core, enc, args.threshold), args.repeats)
    t_sb_ps, ratios = best_of(lambda: sbert_per_situation(refs, core, enc, args.threshold), args.repeats)
    sbert_identical = per["ratio"].tolist() == ratios
    # step 06: four systems' texts (here: core and summary of the released outputs, twice) on the same references
    texts = [core, summary, core, summary]
    t_s6, s6 = best_of(lambda: step06_scoring(refs, texts, enc, args.threshold, cached=True), args.repeats)
    t_s6_n, s6_n = best_of(lambda: step06_scoring(refs, texts, enc, args.threshold, cached=False), args.repeats)

    nli = NLIModel(args.nli_model)
    t_nli, (nper, _) = best_of(lambda: nli_overton(refs, summary, nli), args.repeats)
    t_nli_ps, scores = best_of(lambda: nli_per_situation(refs, summary, nli), args.repeats)
    diff = float(np.max(np.abs(nper["score"].to_numpy() - np.asarray(scores))))
    same_decisions = ((nper["score"] > 0.33).to_numpy() == (np.asarray(scores) > 0.33)).all()
    nli_identical = bool(diff <= 1e-6 and same_decisions)

    result = {
        "rows": len(refs),
        "sbert": {"model": args.sbert_model, "batched_s": round(t_sb, 3), "per_situation_s": round(t_sb_ps, 3),
                  "speedup": round(t_sb_ps / t_sb, 2), "identical": sbert_identical},
        "nli": {"model": args.nli_model, "batched_s": round(t_nli, 3), "per_situation_s": round(t_nli_ps, 3),
                "speedup": round(t_nli_ps / t_nli, 2), "identical": nli_identical, "max_abs_diff": diff,
                "tolerance": 1e-6},
        "step06": {"texts": len(texts), "encode_once_s": round(t_s6, 3), "per_text_s": round(t_s6_n, 3),
                   "speedup": round(t_s6_n / t_s6, 2), "identical": s6 == s6_n},
        "speedup_vs_per_situation": round((t_sb_ps + t_nli_ps) / (t_sb + t_nli), 2),
        "identical": bool(sbert_identical and nli_identical and s6 == s6_n),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    _print(result)


if __name__ == "__main__":
    main()
