"""Re-scoring the authors' logged candidate sentences: every distinct sentence encoded once (``rescore_sbert``)
vs the straightforward per-log loop (each log's rows encoded on their own). The authors scored the same candidates
under several evaluators and thresholds, and every system of a split shares its references, so most sentences
repeat. Prints both times, their ratio and whether the matched counts are identical.

    python benchmarks/authors_rescore.py [--logs 4] [--rows 40] [--encoder sentence-transformers/all-MiniLM-L6-v2]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_of, report  # noqa: E402

from opgrpo_lib.authors.logs import ParsedLog, check_log, parse_log  # noqa: E402
from opgrpo_lib.authors.rescore import rescore_sbert  # noqa: E402
from opgrpo_lib.authors.sources import manifest, read_source  # noqa: E402
from opgrpo_lib.config import load_profile  # noqa: E402
from opgrpo_lib.reward import SentenceEncoder, greedy_matches  # noqa: E402


def pick_logs(cfg, n_logs: int) -> list[ParsedLog]:
    """The verified 5p logs of the candidate file the authors scored most often (same sentences, other evaluators),
    then other 5p logs (same references) until ``n_logs``."""
    parsed = []
    for e in manifest():
        if "/eval_5p_" not in e.upstream_path:
            continue
        log = parse_log(read_source(e, cfg).decode(), e.upstream_path)
        if not check_log(log):
            parsed.append(log)
    freq = Counter(lg.header["CANDIDATE_CSV"] for lg in parsed)
    parsed.sort(key=lambda lg: (-freq[lg.header["CANDIDATE_CSV"]], lg.name))
    return parsed[:n_logs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=int, default=4)
    ap.add_argument("--rows", type=int, default=40, help="rows per log")
    ap.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--threshold", type=float, default=0.70)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_profile("cpu")
    logs = pick_logs(cfg, args.logs)
    items = [(lg.name, "5p", r.row, r.references, r.candidates) for lg in logs for r in lg.rows[: args.rows]]
    enc = SentenceEncoder(args.encoder, device="cpu")

    def naive() -> list[int]:
        out = []
        for _name, _s, _r, refs, cands in items:  # per log, per row: encode what the row holds
            er, ec = enc.encode(refs).astype(float), enc.encode(cands).astype(float)
            out.append(greedy_matches(er @ ec.T, args.threshold) if cands else 0)
        return out

    t_fast, per = best_of(lambda: rescore_sbert(items, enc, args.threshold, "bench"), args.repeats)
    t_naive, ks = best_of(naive, args.repeats)
    distinct = len({s for *_, r, c in items for s in (*r, *c)})
    total = sum(len(r) + len(c) for *_, r, c in items)
    res = {
        "logs": len(logs),
        "rows": len(items),
        "encoder": args.encoder,
        "sentences_per_log_loop": total,
        "distinct_sentences_encoded": distinct,
        "dedup_s": round(t_fast, 3),
        "per_log_loop_s": round(t_naive, 3),
        "speedup_vs_per_log_loop": round(t_naive / t_fast, 2),
        "identical": per["k"].tolist() == ks,
    }
    report(res, args.json)


if __name__ == "__main__":
    main()
