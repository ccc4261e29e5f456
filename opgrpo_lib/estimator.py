"""Step 02: the similarity estimator — triplet mining with pluggable judges, fine-tuning with
sentence-transformers' own trainer (MultipleNegativesRankingLoss), evaluation base vs fine-tuned."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from .config import RunConfig
from .runs import atomic_write_text
from .text import REFERENCE_LINE_RE, keywords, mask_sentence, perspective_name, split_segments

JUDGE_PROMPT = (
    "Determine if the following sentence pair expresses the *same* meaning or perspective. Respond strictly with "
    "'Yes' or 'No'.\n\nSentence A: {a}\nSentence B: {b}\nAnswer:"
)


# ---------------------------------------------------------------- judges
class PairJudge(Protocol):
    name: str

    def same(self, pairs: Sequence[tuple[str, str, str, str]]) -> list[bool]:
        """For (name_a, sentence_a, name_b, sentence_b) pairs: do they express the same meaning or perspective?"""


class NameJudge:
    """Offline judge (documented deviation): two perspectives are "the same" when their names match
    (case-insensitive). Needs no model; works wherever the data's perspective names are known."""

    name = "names"

    def same(self, pairs):
        return [a.strip().lower() == b.strip().lower() for a, _, b, _ in pairs]


class LLMJudge:
    """The paper's judge: a causal LM (paper: Qwen3-8B) on the raw prompt, greedy, 10 new tokens, one vote;
    "yes" anywhere in the text after the last "Answer:" (up to the newline) means the same."""

    name = "llm"

    def __init__(self, model_id: str, device: str | None = None, batch_size: int = 16):
        from . import lm
        from .models import resolve

        self.lm = lm.load(resolve(model_id), device)
        self.batch_size = batch_size

    @staticmethod
    def verdict(text: str) -> bool:
        tail = text.rsplit("Answer:", 1)[-1].strip().split("\n", 1)[0]
        return "yes" in tail.lower()

    def same(self, pairs):
        from tqdm.auto import tqdm

        from . import lm

        prompts = [JUDGE_PROMPT.format(a=a, b=b) for _, a, _, b in pairs]
        out = []
        steps = range(0, len(prompts), self.batch_size)
        for start in tqdm(steps, desc="LLM judge", disable=len(prompts) <= 4 * self.batch_size):
            texts = lm.sample(self.lm, prompts[start : start + self.batch_size], 10, 0.0, chat=False)  # greedy
            out += [self.verdict("Answer:" + t) for t in texts]
        return out


# ---------------------------------------------------------------- mining
TripletKind = Literal["within", "output", "across"]
KINDS: tuple[TripletKind, ...] = ("within", "output", "across")
TRIPLET_COLUMNS = ["prompt", "anchor", "positive", "negative", "kind"]
JudgePair = tuple[str, str, str, str]  # (name_a, sentence_a, name_b, sentence_b)


@dataclass
class MiningReport:
    """Counts of one mining pass; every situation without a triplet is counted under a reason in ``skipped``."""

    judge: str
    candidates: str = "references"
    situations: int = 0
    triplets: int = 0
    within_situation: int = 0  # kind "within": positive = another reference of the same situation
    from_outputs: int = 0  # kind "output": positive = a released model-output line of the same situation
    across_situations: int = 0  # kind "across" (fallback): positive = same-name reference of another situation
    negatives_from_outputs: int = 0  # hard negative is a model-output line (else a reference)
    skipped: dict[str, int] = field(default_factory=dict)
    judge_calls: int = 0
    candidate_pairs_references: int = 0  # (reference, reference) pairs with masked cosine >= threshold
    candidate_pairs_outputs: int = 0  # (reference, output line) pairs passing ``output_threshold``
    # released_outputs only: the material and how often an output line repeats a reference's perspective name
    situations_with_outputs: int = 0
    output_lines: int = 0
    output_lines_unnamed: int = 0  # no "In/From the perspective of X," prefix
    references_with_outputs: int = 0  # reference perspectives of situations that have an output
    references_name_matched: int = 0  # ... whose name (case-insensitive) an output line of that situation repeats
    situations_name_matched: int = 0  # situations with at least one such reference

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class OutputLine:
    """One perspective segment of a model output: its name as written ("" without a prefix), its text with the
    "In/From the perspective of X," prefix stripped (as the references' explanations are), and the whole segment
    (what the reward compares)."""

    name: str
    text: str
    segment: str


def output_lines(core: str) -> list[OutputLine]:
    """Segments of a model output's core block by the reward's own split (``text.split_segments``), prefix
    stripped; a segment without the prefix keeps its whole text and the name ""."""
    out = []
    for seg in split_segments(core):
        m = REFERENCE_LINE_RE.match(seg)
        if m and m.group(2).strip():
            out.append(OutputLine(m.group(1).strip(), m.group(2).replace("\n", " ").strip(), seg))
        else:
            out.append(OutputLine(perspective_name(seg) or "", seg.replace("\n", " "), seg))
    return out


def _same_name(a: str, b: str) -> bool:
    return bool(a.strip()) and a.strip().lower() == b.strip().lower()


def _situation_items(row: Any) -> tuple[list[str], list[str]]:
    persp = list(row["perspectives"])
    return [p["name"] for p in persp], [p["explanation"] for p in persp]


@dataclass
class SituationCandidates:
    """One situation's mining material. Sentences ``[0, n_refs)`` are its reference perspectives, the rest its
    model-output lines; ``sents`` are prefix-stripped texts (what triplets hold), ``emb`` their keyword-masked
    embeddings, ``pairs`` the candidate (anchor, positive) index pairs, most similar first (anchor = reference)."""

    prompt: str
    names: list[str]
    sents: list[str]
    n_refs: int
    emb: np.ndarray
    pairs: list[tuple[int, int]]

    @property
    def sim(self) -> np.ndarray:
        return self.emb @ self.emb.T

    def is_output(self, k: int) -> bool:
        return k >= self.n_refs

    def judge_pair(self, i: int, j: int) -> JudgePair:
        return (self.names[i], self.sents[i], self.names[j], self.sents[j])


def _candidate_pairs(
    sim: np.ndarray, n_refs: int, threshold: float, output_threshold: float | None
) -> tuple[list[tuple[int, int]], int, int]:
    """(i < j) pairs: reference–reference at cosine ≥ ``threshold``, reference–output at ≥ ``output_threshold``
    (every such pair when None); most similar first, ties in row-major order. Also the two counts."""
    iu = np.triu_indices(sim.shape[0], k=1)
    vals = sim[iu]
    both_refs = iu[1] < n_refs
    ref_out = (iu[0] < n_refs) & ~both_refs
    keep_out = ref_out if output_threshold is None else ref_out & (vals >= output_threshold)
    keep = (both_refs & (vals >= threshold)) | keep_out
    order = np.argsort(-vals[keep], kind="stable")
    ii, jj = iu[0][keep], iu[1][keep]
    return [(int(ii[k]), int(jj[k])) for k in order], int((both_refs & keep).sum()), int(keep_out.sum())


def build_candidates(
    frame: pd.DataFrame,
    encoder: Any,
    threshold: float,
    report: MiningReport,
    outputs: dict[str, list[OutputLine]] | None = None,
    output_threshold: float | None = None,
) -> list[SituationCandidates]:
    """Every situation's references (and, with ``outputs``, its own model-output lines), keyword-masked with the
    situation's non-stopwords and embedded in one encoder call; situations with < 2 sentences are skipped."""
    staged = []
    for row in frame.to_dict("records"):
        report.situations += 1
        names, sents = _situation_items(row)
        lines = (outputs or {}).get(row["prompt"], [])
        if lines:
            out_names = {ln.name.strip().lower() for ln in lines if ln.name.strip()}
            hits = sum(n.strip().lower() in out_names for n in names)
            report.situations_with_outputs += 1
            report.output_lines += len(lines)
            report.output_lines_unnamed += sum(not ln.name.strip() for ln in lines)
            report.references_with_outputs += len(names)
            report.references_name_matched += hits
            report.situations_name_matched += hits > 0
        if not sents or len(sents) + len(lines) < 2:
            report.skip("fewer than 2 sentences")
            continue
        kws = keywords(row["prompt"])
        all_names, all_sents = names + [ln.name for ln in lines], sents + [ln.text for ln in lines]
        staged.append((row["prompt"], all_names, all_sents, len(sents), [mask_sentence(s, kws) for s in all_sents]))
    if not staged:
        return []
    emb = encoder.encode([m for *_, masked in staged for m in masked]).astype(np.float64)
    sits, offset = [], 0
    for prompt, names, sents, n_refs, _ in staged:
        e = emb[offset : offset + len(sents)]
        offset += len(sents)
        pairs, n_ref_pairs, n_out_pairs = _candidate_pairs(e @ e.T, n_refs, threshold, output_threshold)
        report.candidate_pairs_references += n_ref_pairs
        report.candidate_pairs_outputs += n_out_pairs
        sits.append(SituationCandidates(prompt, names, sents, n_refs, e, pairs))
    return sits


def judge_rounds(
    judge: PairJudge, queues: Sequence[Sequence[JudgePair]], want: bool, report: MiningReport
) -> list[int | None]:
    """For each queue, the index of its first pair whose verdict is ``want`` (None when there is none). Round r
    sends the r-th pair of every undecided queue to the judge in one batched call: the result equals scanning
    each queue in order, with one judge call per round."""
    found: list[int | None] = [None] * len(queues)
    r = 0
    while True:
        active = [q for q, queue in enumerate(queues) if found[q] is None and r < len(queue)]
        if not active:
            return found
        verdicts = judge.same([queues[q][r] for q in active])
        report.judge_calls += len(active)
        for q, verdict in zip(active, verdicts):
            if verdict == want:
                found[q] = r
        r += 1


@dataclass(frozen=True)
class Positive:
    """A situation's chosen (anchor, positive): anchor = a reference index; ``index`` = the positive's index in
    the same situation (None when it comes from another situation); ``text`` = the positive sentence."""

    anchor: int
    index: int | None
    text: str
    kind: TripletKind


def select_positives(
    sits: Sequence[SituationCandidates], judge: PairJudge, report: MiningReport
) -> list[Positive | None]:
    """The first candidate pair (most similar first) the judge confirms, per situation."""
    found = judge_rounds(judge, [[s.judge_pair(i, j) for i, j in s.pairs] for s in sits], True, report)
    out: list[Positive | None] = []
    for s, f in zip(sits, found):
        if f is None:
            out.append(None)
            continue
        a, p = s.pairs[f]
        out.append(Positive(a, p, s.sents[p], "output" if s.is_output(p) else "within"))
    return out


def cross_situation_positives(
    sits: Sequence[SituationCandidates], chosen: Sequence[Positive | None]
) -> list[Positive | None]:
    """Name-judge fallback for situations without a confirmed pair: the most similar (masked cosine) pair of one
    of its references and a same-name reference of another situation (labelled ``across``)."""
    by_name: dict[str, list[tuple[int, int]]] = {}
    for si, s in enumerate(sits):
        for k in range(s.n_refs):
            by_name.setdefault(s.names[k].strip().lower(), []).append((si, k))
    out = list(chosen)
    for si, s in enumerate(sits):
        if out[si] is not None:
            continue
        best = None
        for k in range(s.n_refs):
            for sj, kk in by_name[s.names[k].strip().lower()]:
                if sj != si:
                    c = float(s.emb[k] @ sits[sj].emb[kk])
                    if best is None or c > best[0]:
                        best = (c, k, sj, kk)
        if best is not None:
            out[si] = Positive(best[1], None, sits[best[2]].sents[best[3]], "across")
    return out


def select_negatives(
    sits: Sequence[SituationCandidates], positives: Sequence[Positive], judge: PairJudge, report: MiningReport
) -> list[int | None]:
    """Hard negative per situation: the first sentence of the same situation (reference or output line), in
    descending masked cosine to the anchor, that the judge rejects; None when it rejects none."""
    orders = [
        [int(k) for k in np.argsort(-s.sim[p.anchor], kind="stable") if k not in (p.anchor, p.index)]
        for s, p in zip(sits, positives)
    ]
    queues = [[s.judge_pair(p.anchor, k) for k in order] for s, p, order in zip(sits, positives, orders)]
    found = judge_rounds(judge, queues, False, report)
    return [None if f is None else order[f] for f, order in zip(found, orders)]


def mine_triplets(
    frame: pd.DataFrame,
    encoder: Any,
    judge: PairJudge,
    threshold: float = 0.75,
    cross_situation: bool = True,
    outputs: dict[str, list[OutputLine]] | None = None,
    output_threshold: float | None = None,
) -> tuple[pd.DataFrame, MiningReport]:
    """At most one (anchor, positive, negative) per situation, the authors' rule with batched judging.

    Candidates are the (i < j) pairs of a situation's prefix-stripped perspective sentences whose keyword-masked
    cosine is ≥ ``threshold``, most similar first; the first pair the judge confirms gives (anchor, positive); the
    hard negative is the first sentence, in descending cosine to the anchor, the judge rejects.

    With ``outputs`` (prompt → model-output lines; the caller keeps training situations only), a situation's
    output lines join its pool: (reference, output line) pairs at cosine ≥ ``output_threshold`` (all when None)
    are candidates too, so the positive may be an output line matched to the anchor reference (kind ``output``)
    and the hard negative a reference or an output line. With ``cross_situation`` (name judge only) a situation
    without a confirmed pair takes as positive the most similar same-name reference of another situation (kind
    ``across``; documented fallback).
    """
    report = MiningReport(judge.name, "references" if outputs is None else "released_outputs")
    sits = build_candidates(frame, encoder, threshold, report, outputs, output_threshold)
    if not sits:
        return pd.DataFrame(columns=TRIPLET_COLUMNS), report
    chosen = select_positives(sits, judge, report)
    if cross_situation and judge.name == "names":
        chosen = cross_situation_positives(sits, chosen)
    with_pos: list[tuple[SituationCandidates, Positive]] = []
    for s, p in zip(sits, chosen):
        if p is None:
            report.skip("no pair >= threshold" if not s.pairs else "judge confirmed no pair")
        else:
            with_pos.append((s, p))
    negatives = select_negatives([s for s, _ in with_pos], [p for _, p in with_pos], judge, report)
    rows = []
    for (s, p), neg in zip(with_pos, negatives):
        if neg is None:
            report.skip("judge rejected no sentence")
            continue
        report.negatives_from_outputs += s.is_output(neg)
        rows.append(
            {
                "prompt": s.prompt,
                "anchor": s.sents[p.anchor],
                "positive": p.text,
                "negative": s.sents[neg],
                "kind": p.kind,
            }
        )
    out = pd.DataFrame(rows, columns=TRIPLET_COLUMNS)
    report.triplets = len(out)
    report.within_situation = int((out["kind"] == "within").sum())
    report.from_outputs = int((out["kind"] == "output").sum())
    report.across_situations = int((out["kind"] == "across").sum())
    return out, report


# ---------------------------------------------------------------- released outputs
RELEASED_FILES = {"5p": "grpo_eval_summaries_clean.csv", "10p": "grpo_eval_summaries_clean_10p.csv"}


def released_path(name: str, cfg: RunConfig) -> Path:
    """A verified copy (sha256 + git blob sha1 of ``data.FILES``) of one released-output file: from
    ``estimator.released_dir``, else ``$OPGRPO_DATA_DIR``, else the cache, else downloaded at the pinned commit."""
    from .data import ENV_DATA_DIR, fetch

    return fetch(name, cfg, dirs=[cfg.estimator.released_dir, os.environ.get(ENV_DATA_DIR)])


def load_released_outputs(cfg: RunConfig) -> pd.DataFrame:
    """The authors' released OP-GRPO Qwen2.5-3B outputs on test_5p and test_10p, hash-checked: columns
    ``split, prompt, answer_p`` (core block), ``answers`` (summary), ``ok`` (valid layout)."""
    frames = []
    for split, name in RELEASED_FILES.items():
        df = pd.read_csv(released_path(name, cfg), keep_default_na=False)
        missing = {"prompt", "answer_p"} - set(df.columns)
        if missing:
            raise ValueError(f"{name}: missing columns {sorted(missing)}")
        frames.append(df.assign(split=split))
    return pd.concat(frames, ignore_index=True)


def training_outputs(
    released: pd.DataFrame, train: pd.DataFrame, evaluation: pd.DataFrame
) -> tuple[dict[str, list[OutputLine]], dict[str, int]]:
    """Output lines of TRAINING situations only (prompt → lines), with counts. The released outputs cover
    published test situations, some of which are evaluation situations: those are dropped, and an evaluation
    prompt among the kept ones is an error."""
    train_prompts, eval_prompts = set(train["prompt"]), set(evaluation["prompt"])
    kept = {
        p: output_lines(str(core)) for p, core in zip(released["prompt"], released["answer_p"]) if p in train_prompts
    }
    leaked = set(kept) & eval_prompts
    if leaked:
        raise AssertionError(f"{len(leaked)} evaluation situations would be mined, e.g. {sorted(leaked)[0]!r}")
    in_eval = int(released["prompt"].isin(eval_prompts).sum())
    counts = {
        "released_rows": int(len(released)),
        "training_situations": len(kept),
        "evaluation_excluded": in_eval,
        "other_excluded": int(len(released)) - len(kept) - in_eval,
    }
    return kept, counts


# ---------------------------------------------------------------- reference ↔ output separation
def separation_auc(matched: Sequence[float], unmatched: Sequence[float]) -> float:
    """Probability that a matched pair scores higher than an unmatched one, ties counting half (ROC AUC,
    Mann-Whitney); NaN when either side is empty."""
    pos, neg = np.asarray(matched, dtype=np.float64), np.sort(np.asarray(unmatched, dtype=np.float64))
    if not len(pos) or not len(neg):
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def reference_output_pairs(
    frame: pd.DataFrame, outputs: dict[str, list[OutputLine]], view: str = "mining", keyword_text: Any = None
) -> pd.DataFrame:
    """Every (reference perspective, output line) pair of the situations of ``frame`` that have output lines,
    with ``matched`` = same perspective name (case-insensitive). ``view`` says what gets compared:

    * ``mining``: prefix-stripped explanations, both keyword-masked with the situation's words (what the
      estimator is trained on);
    * ``reward``: what the reward compares — the full reference line against the full output segment masked
      with the non-stopwords of ``keyword_text(situation)`` (default: the situation).
    """
    rows = []
    for row in frame.to_dict("records"):
        lines = outputs.get(row["prompt"])
        if not lines:
            continue
        names, sents = _situation_items(row)
        if view == "mining":
            kws = keywords(row["prompt"])
            refs = [mask_sentence(s, kws) for s in sents]
            cands = [mask_sentence(ln.text, kws) for ln in lines]
        elif view == "reward":
            kws = keywords(keyword_text(row["prompt"]) if keyword_text else row["prompt"])
            refs = split_segments(row["answer"])  # the reward's reference segments (one per perspective)
            cands = [mask_sentence(ln.segment, kws) for ln in lines]
        else:
            raise ValueError(f"view: expected 'mining' or 'reward', got {view!r}")
        for i, (n, r) in enumerate(zip(names, refs)):
            for j, (ln, c) in enumerate(zip(lines, cands)):
                rows.append(
                    {
                        "prompt": row["prompt"],
                        "ref": i,
                        "line": j,
                        "reference": r,
                        "candidate": c,
                        "matched": _same_name(n, ln.name),
                    }
                )
    return pd.DataFrame(rows, columns=["prompt", "ref", "line", "reference", "candidate", "matched"])


def separation(encoder: Any, pairs: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Cosine AUC of matched vs unmatched (reference, output line) pairs, and the share of each at or above the
    reward's coverage ``threshold`` (one encode call for the distinct texts)."""
    if not len(pairs):
        return {"pairs_matched": 0, "pairs_unmatched": 0, "auc": float("nan")}
    texts = list(dict.fromkeys(pairs["reference"].tolist() + pairs["candidate"].tolist()))
    emb = dict(zip(texts, encoder.encode(texts).astype(np.float64)))
    cos = np.array([emb[r] @ emb[c] for r, c in zip(pairs["reference"], pairs["candidate"])])
    m = pairs["matched"].to_numpy(bool)
    return {
        "pairs_matched": int(m.sum()),
        "pairs_unmatched": int((~m).sum()),
        "auc": separation_auc(cos[m], cos[~m]),
        f"matched_at_{threshold}": float((cos[m] >= threshold).mean()) if m.any() else float("nan"),
        f"unmatched_at_{threshold}": float((cos[~m] >= threshold).mean()) if (~m).any() else float("nan"),
    }


def judge_agreement(
    frame: pd.DataFrame, encoder: Any, a: PairJudge, b: PairJudge, threshold: float, max_pairs: int
) -> dict:
    """How often two judges agree on the within-situation candidate pairs (cosine ≥ threshold) of ``frame``."""
    pairs = []
    for row in frame.to_dict("records"):
        names, sents = _situation_items(row)
        kws = keywords(row["prompt"])
        e = encoder.encode([mask_sentence(s, kws) for s in sents]).astype(np.float64)
        sim = e @ e.T
        for i in range(len(sents)):
            for j in range(i + 1, len(sents)):
                if sim[i, j] >= threshold:
                    pairs.append((names[i], sents[i], names[j], sents[j]))
        if len(pairs) >= max_pairs:
            break
    pairs = pairs[:max_pairs]
    if not pairs:
        return {"pairs": 0, "agreement": None}
    va, vb = a.same(pairs), b.same(pairs)
    agree = float(np.mean([x == y for x, y in zip(va, vb)]))
    return {
        "pairs": len(pairs),
        "agreement": agree,
        f"{a.name}_yes": float(np.mean(va)),
        f"{b.name}_yes": float(np.mean(vb)),
    }


# ---------------------------------------------------------------- fine-tuning
def finetune(
    triplets: pd.DataFrame, base: str, out_dir: Path, cfg: RunConfig, device: str | None = None, resume: bool = True
) -> Path:
    """MultipleNegativesRankingLoss (in-batch + hard negatives) with SentenceTransformerTrainer; no duplicates in a
    batch; checkpoints under ``out_dir/checkpoints``, resumed from the last complete one when ``resume``; the final
    model in ``out_dir/model``."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from .models import resolve
    from .progress import trainer_callback
    from .runs import last_complete_checkpoint

    ec = cfg.estimator
    if len(triplets) < 2:
        raise ValueError(f"only {len(triplets)} triplets mined; cannot fine-tune (see the mining report)")
    model = SentenceTransformer(resolve(base), device=device)
    ds = Dataset.from_pandas(triplets[["anchor", "positive", "negative"]].reset_index(drop=True))
    ckpt = out_dir / "checkpoints"
    cuda = torch.cuda.is_available() and device != "cpu"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ckpt),
        num_train_epochs=ec.epochs,
        max_steps=ec.max_steps,
        per_device_train_batch_size=ec.batch_size,
        learning_rate=ec.learning_rate,
        warmup_steps=ec.warmup_ratio,
        fp16=cuda,
        bf16=False,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="steps",
        save_steps=ec.save_steps,
        save_total_limit=2,
        logging_steps=max(1, ec.save_steps // 5),
        report_to="none",
        seed=cfg.seed,
        use_cpu=not cuda,
        dataloader_drop_last=False,
        disable_tqdm=False,
    )
    loss = MultipleNegativesRankingLoss(model, scale=ec.scale)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=ds, loss=loss, callbacks=[trainer_callback("estimator")]
    )
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(ckpt) if resume else None)
    final = out_dir / "model"
    model.save(str(final))
    atomic_write_text(out_dir / "train_log.json", json.dumps(trainer.state.log_history, indent=1))
    return final


# ---------------------------------------------------------------- evaluation
def triplet_similarities(encoder: Any, triplets: pd.DataFrame) -> pd.DataFrame:
    """cos(anchor, positive) and cos(anchor, negative) per triplet (one encode call for all distinct texts)."""
    texts = list(
        dict.fromkeys(triplets["anchor"].tolist() + triplets["positive"].tolist() + triplets["negative"].tolist())
    )
    emb = dict(zip(texts, encoder.encode(texts).astype(np.float64)))
    pos = [float(emb[a] @ emb[p]) for a, p in zip(triplets["anchor"], triplets["positive"])]
    neg = [float(emb[a] @ emb[n]) for a, n in zip(triplets["anchor"], triplets["negative"])]
    return pd.DataFrame({"sim_pos": pos, "sim_neg": neg})


def triplet_accuracy(sims: pd.DataFrame) -> float:
    return float((sims["sim_pos"] > sims["sim_neg"]).mean()) if len(sims) else float("nan")


def alignment_curve(sims: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """Reference-to-sentence alignment on held-out triplets: each anchor (reference) must be matched to its
    positive among {positive, negative}. At threshold t the greedy matcher picks the more similar candidate if it
    reaches t: precision = correct / matched, recall = correct / references."""
    rows = []
    for t in thresholds:
        best_is_pos = sims["sim_pos"] >= sims["sim_neg"]
        best = np.where(best_is_pos, sims["sim_pos"], sims["sim_neg"])
        matched = best >= t
        correct = matched & best_is_pos
        n_match = int(matched.sum())
        rows.append(
            {
                "threshold": round(float(t), 4),
                "matched": n_match,
                "correct": int(correct.sum()),
                "precision": float(correct.sum() / n_match) if n_match else float("nan"),
                "recall": float(correct.sum() / len(sims)) if len(sims) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- evaluation of base vs fine-tuned
def evaluate_estimators(
    cfg: RunConfig, encoders: dict[str, Any], trip_held: pd.DataFrame, held: pd.DataFrame, outputs: Any
) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict | None]:
    """Held-out triplet similarities, alignment curves, accuracy per triplet kind and (with released outputs) how
    well each encoder separates matched from unmatched (reference, output line) pairs."""
    from .reward import keyword_text_for

    sims = pd.concat(
        [
            triplet_similarities(enc, trip_held).assign(model=name, kind=trip_held["kind"].to_numpy())
            for name, enc in encoders.items()
        ],
        ignore_index=True,
    )
    by_kind = {
        m: {k: triplet_accuracy(part[part.kind == k]) for k in KINDS if (part.kind == k).any()}
        for m, part in sims.groupby("model", sort=False)
    }
    separation_held = None
    if outputs is not None:  # held-out TRAINING situations that have a released output
        kw_text = (lambda s: keyword_text_for(s, "qwen2.5")) if cfg.reward.mask == "prompt" else None
        separation_held = {
            view: {name: separation(enc, pairs, cfg.reward.coverage_threshold) for name, enc in encoders.items()}
            for view, pairs in (
                ("mining", reference_output_pairs(held, outputs, "mining")),
                ("reward", reference_output_pairs(held, outputs, "reward", kw_text)),
            )
        }
    curves = pd.concat(
        [
            alignment_curve(part, cfg.estimator.thresholds).assign(model=m)
            for m, part in sims.groupby("model", sort=False)
        ],
        ignore_index=True,
    )
    return sims, curves, by_kind, separation_held


def deviation(ec: Any, rep_fit: MiningReport) -> str | None:
    if ec.judge == "llm" and ec.candidates == "references":
        return None
    parts = (
        []
        if ec.judge == "llm"
        else ["offline name judge: same perspective name = same perspective; the paper confirms pairs with Qwen3-8B"]
    )
    if ec.candidates != "references":
        parts.append(
            "offline pool: each training situation's references plus the authors' released 3B output lines "
            "of the same situation (5p/10p), where the paper mines within ValuePrism answers"
        )
    if ec.cross_situation and ec.judge == "names":
        parts.append(f"fallback: same-name reference of another situation ({rep_fit.across_situations} triplets)")
    return "; ".join(parts)
