"""Evaluators: SBERT coverage (the authors' logged metric), the NLI Overton benchmark (Modular Pluralism protocol,
the paper's headline metric) and token efficiency. Every evaluator batches across situations and encodes or
classifies each distinct input once; per-situation records come back as a frame for ``results/<profile>/eval``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .coverage import sbert_matches
from .nli import NLI_THRESHOLD, load_nli, situation_score
from .reward import CachedEncoder, Encoder
from .stats import bootstrap_ci, describe
from .text import MalformedReference, eval_candidate_sentences, eval_reference_sentences, parse_perspectives


def join_candidates(references: pd.DataFrame, candidates: pd.DataFrame, column: str) -> list[str | None]:
    """Candidate text for each reference row, looked up by ``prompt`` (first duplicate kept); None if absent."""
    if column not in candidates.columns:
        raise ValueError(f"candidate column {column!r} not found; columns are {list(candidates.columns)}")
    first = candidates.drop_duplicates("prompt", keep="first")
    lookup = dict(zip(first["prompt"], first[column]))
    out = []
    for p in references["prompt"]:
        v = lookup.get(p)
        out.append(v if isinstance(v, str) else None)
    return out


# ---------------------------------------------------------------- SBERT coverage
def sbert_coverage(
    references: pd.DataFrame, candidates: Sequence[str | None], encoder: Encoder, threshold: float = 0.70
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`coverage.sbert_matches` per situation and their summary (means, accuracies, bootstrap CIs)."""
    per, skipped, missing = sbert_matches(references, candidates, encoder, threshold)
    return per, summarize_sbert(per, threshold, skipped, missing)


def summarize_sbert(
    per: pd.DataFrame, threshold: float, skipped: dict[str, int] | None = None, missing: int = 0
) -> dict[str, Any]:
    d = describe(per["ratio"].tolist())
    n = d["n"]
    hit = int(per["hit_all"].sum()) if n else 0
    rel_ci = bootstrap_ci(per["ratio"].tolist()) if n else (None, None)
    abs_ci = bootstrap_ci(per["hit_all"].astype(float).tolist()) if n else (None, None)
    return {
        "n": n,
        "hit_all": hit,
        "absolute_accuracy": hit / n if n else None,
        "relative_accuracy": d["mean"],
        "std": d["std"],
        "std_error": d["std_error"],
        "relative_ci": list(rel_ci),
        "absolute_ci": list(abs_ci),
        "threshold": threshold,
        "missing_candidates": int(missing),
        "skipped": skipped or {},
    }


def sbert_sentences(groups: Sequence[tuple[pd.DataFrame, pd.DataFrame, Sequence[str]]]) -> list[str]:
    """Every reference and candidate sentence of (references, outputs, text columns) groups, each once."""
    out: set[str] = set()
    for refs, grp, columns in groups:
        out.update(s for a in refs["answer"] if isinstance(a, str) for s in eval_reference_sentences(a))
        for col in columns:
            out.update(s for t in grp[col] if isinstance(t, str) for s in eval_candidate_sentences(t))
    return sorted(out)


# ---------------------------------------------------------------- NLI Overton benchmark
def split_output_sentences(text: str) -> list[str]:
    """Output sentences for NLI: ``sentence-splitter`` (English), empty ones dropped."""
    from sentence_splitter import SentenceSplitter

    return [s.strip() for s in SentenceSplitter(language="en").split(text) if s.strip()]


def nli_overton(
    references: pd.DataFrame, candidates: Sequence[str | None], model: Any, progress: bool = False
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Premise = reference explanation, hypothesis = output sentence. An empty output scores 0 (as the authors'
    NLI evaluation); a reference without a candidate row is excluded and counted as ``missing_candidates`` (the
    same policy as :func:`sbert_coverage`)."""
    pair_index: dict[tuple[str, str], int] = {}
    layout = []
    missing = 0
    for prompt, answer, cand in zip(references["prompt"], references["answer"], candidates):
        try:
            expl = [e for _, e in parse_perspectives(answer)]
        except MalformedReference as exc:
            raise MalformedReference(f"reference for {prompt!r}: {exc}") from exc
        if cand is None:
            missing += 1
            continue
        sents = split_output_sentences(cand)
        cells = [[pair_index.setdefault((e, s), len(pair_index)) for s in sents] for e in expl]
        layout.append((prompt, len(expl), len(sents), cells))
    pairs = list(pair_index)
    probs = model.entailment([p for p, _ in pairs], [h for _, h in pairs], progress=progress) if pairs else np.zeros(0)
    records = []
    for prompt, n_ref, n_sent, cells in layout:
        mat = probs[np.asarray(cells, dtype=int)] if n_ref and n_sent else np.zeros((0, 0))
        score = situation_score(mat)
        records.append(
            {
                "prompt": prompt,
                "score": score,
                "n_references": n_ref,
                "n_sentences": n_sent,
                "covered": score > NLI_THRESHOLD,
            }
        )
    per = pd.DataFrame(records, columns=["prompt", "score", "n_references", "n_sentences", "covered"])
    return per, summarize_nli(per, missing)


def summarize_nli(per: pd.DataFrame, missing: int = 0) -> dict[str, Any]:
    d = describe(per["score"].tolist())
    n = d["n"]
    acc = float((per["score"] > NLI_THRESHOLD).mean()) if n else None
    return {
        "n": n,
        "accuracy": acc,
        "accuracy_ci": list(bootstrap_ci((per["score"] > NLI_THRESHOLD).astype(float).tolist()))
        if n
        else [None, None],
        "mean_score": d["mean"],
        "std": d["std"],
        "std_error": d["std_error"],
        "threshold": NLI_THRESHOLD,
        "missing_candidates": int(missing),
    }


# ---------------------------------------------------------------- token efficiency
@dataclass(frozen=True)
class TokenStats:
    n: int
    mean_tokens: float | None
    mean_words: float | None


def token_stats(texts: Sequence[str | None], tokenizer: Any) -> TokenStats:
    """Mean ``len(tokenizer.tokenize(text))`` and whitespace words over the non-missing outputs."""
    present = [t for t in texts if isinstance(t, str)]
    if not present:
        return TokenStats(0, None, None)
    toks = [len(tokenizer.tokenize(t)) for t in present]
    words = [len(t.split()) for t in present]
    return TokenStats(len(present), float(np.mean(toks)), float(np.mean(words)))


# ---------------------------------------------------------------- step 06
def _metric_row(system: str, split: str, metric: str, summary: dict[str, Any], **extra: Any) -> dict[str, Any]:
    flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    for key in ("relative_ci", "absolute_ci", "accuracy_ci"):
        if key in summary:
            flat[f"{key}_low"], flat[f"{key}_high"] = summary[key]
    return {"system": system, "split": split, "metric": metric, **extra, **flat}


@dataclass
class Evaluators:
    encoder: Any
    tokenizer: Any
    nli: Any  # NLIModel or None
    nli_status: str
    estimator: Any = None  # the reward's own estimator, with eval.estimator_coverage


def load_evaluators(cfg, paths=None) -> Evaluators:
    """The independent SBERT encoder, the token-count tokenizer and the NLI model (or why NLI is skipped)."""
    from transformers import AutoTokenizer

    from .models import resolve
    from .reward import SentenceEncoder

    nli_model, nli_status = load_nli(cfg.models.nli, batch_size=cfg.eval.nli_batch_size)
    encoder = SentenceEncoder(cfg.models.eval_encoder, batch_size=cfg.reward.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.models.tokenizer))
    estimator = None
    if cfg.eval.estimator_coverage:
        from .models import resolve_estimator

        estimator = SentenceEncoder(resolve_estimator(cfg, paths), batch_size=cfg.reward.batch_size)
    return Evaluators(encoder, tokenizer, nli_model, nli_status, estimator)


# (system, split, its outputs, their references, the SBERT-scored column)
_Group = tuple[str, str, pd.DataFrame, pd.DataFrame, str]
_Encoders = list[tuple[str, str, CachedEncoder]]  # (evaluator, metric suffix, encoder)


def _output_groups(cfg, outputs: pd.DataFrame, ev: pd.DataFrame) -> list[_Group]:
    """One :data:`_Group` per (system, split) of ``outputs``, in the order they first appear."""
    systems = {s.name: s for s in cfg.generate.systems}
    groups = []
    for (system, split), grp in outputs.groupby(["system", "split"], sort=False):
        base = systems.get(system.split("@")[0])
        refs = ev[(ev["split"] == split) & ev["prompt"].isin(grp["prompt"])]
        groups.append((system, split, grp, refs, base.score_column if base else "text"))
    return groups


def _sbert_encoders(groups: list[_Group], evs: Evaluators) -> _Encoders:
    """The independent encoder and the estimator (when loaded), each with every distinct sentence of ``groups``
    encoded up front in one length-sorted pass (a split's references are scored once per system, text and
    evaluator)."""
    corpus = sbert_sentences([(refs, grp, (column, "summary")) for _, _, grp, refs, column in groups])
    encoders = [("independent", "", CachedEncoder(evs.encoder))] + (
        [("estimator", "_estimator", CachedEncoder(evs.estimator))] if evs.estimator is not None else []
    )
    for _, _, encoder in encoders:
        encoder.encode(corpus)
    return encoders


def _sbert_group(cfg, group: _Group, encoders: _Encoders) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """SBERT metric rows and per-situation frames of one group: the scored text and the summary block, under every
    evaluator and threshold."""
    system, split, grp, refs, column = group
    extra = {"prompt_style": grp["prompt_style"].iloc[0]}
    metrics, rows = [], []
    summary = grp.assign(_s=grp["summary"].where(grp["summary"].str.strip() != ""))
    for (evaluator, suffix, encoder), thr in itertools.product(encoders, cfg.eval.sbert_thresholds):
        for kind, texts in (
            ("sbert", join_candidates(refs, grp, column)),
            ("sbert_summary", join_candidates(refs, summary, "_s")),
        ):
            if kind == "sbert_summary" and all(t is None for t in texts):
                continue  # no output has a summary block
            col = column if kind == "sbert" else "summary"
            per, summ = sbert_coverage(refs, texts, encoder, thr)
            metrics.append(_metric_row(system, split, kind + suffix, summ, threshold=thr, text=col, **extra))
            rows.append(per.assign(system=system, split=split, threshold=thr, text=col, evaluator=evaluator))
    return metrics, rows


def _tokens_row(system: str, split: str, grp: pd.DataFrame, tokenizer: Any) -> dict[str, Any]:
    ts = token_stats(grp["text"].tolist(), tokenizer)
    return {
        "system": system,
        "split": split,
        "metric": "tokens",
        "n": ts.n,
        "mean_tokens": ts.mean_tokens,
        "mean_words": ts.mean_words,
        "valid_format_rate": float(grp["valid_format"].mean()),
        "mean_attempts": float(grp["attempts"].mean()),
        "prompt_style": grp["prompt_style"].iloc[0],
    }


def score_outputs(
    cfg, outputs: pd.DataFrame, ev: pd.DataFrame, evs: Evaluators, timings: dict[str, float], progress: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(metrics, SBERT per-sample, NLI per-sample) for every (system, split) group of ``outputs``."""
    from .progress import emit
    from .runs import timed

    metrics, sbert_rows, nli_rows = [], [], []
    groups = _output_groups(cfg, outputs, ev)
    with timed(timings, "sbert"):
        encoders = _sbert_encoders(groups, evs)
    for k, group in enumerate(groups):
        system, split, grp, refs, _ = group
        emit("evaluate", k, len(groups), system=system, split=split)
        with timed(timings, "sbert"):
            rows, per_rows = _sbert_group(cfg, group, encoders)
        metrics += rows
        sbert_rows += per_rows
        if evs.nli is not None:
            with timed(timings, "nli"):
                per, summ = nli_overton(refs, join_candidates(refs, grp, cfg.eval.nli_text), evs.nli, progress)
                extra = {"prompt_style": grp["prompt_style"].iloc[0]}
                metrics.append(_metric_row(system, split, "nli", summ, text=cfg.eval.nli_text, **extra))
                nli_rows.append(per.assign(system=system, split=split))
        metrics.append(_tokens_row(system, split, grp, evs.tokenizer))
    sbert_per = pd.concat(sbert_rows, ignore_index=True) if sbert_rows else pd.DataFrame()
    nli_per = pd.concat(nli_rows, ignore_index=True) if nli_rows else pd.DataFrame()
    return pd.DataFrame(metrics), sbert_per, nli_per


def paired_comparisons(
    sbert_per: pd.DataFrame, nli_per: pd.DataFrame, reference: str, reps: int, seed: int
) -> pd.DataFrame:
    """reference system − each other system on the situations both scored (paired bootstrap, with the paired SD
    and the minimum detectable effect at 80 % power), per split, pooled over every split (``all``) and over 5p+10p
    (``5p+10p``, the splits every profile evaluates at size)."""
    from .stats import paired_against

    rows = []
    for metric, per, value in (("sbert", sbert_per, "ratio"), ("nli", nli_per, "score")):
        if per.empty or reference not in set(per["system"]):
            continue
        keys = ["split"] + [k for k in ("evaluator", "threshold") if k in per and metric == "sbert"]
        per = per[per.get("text", "x") != "summary"] if metric == "sbert" else per
        pools = [per, per.assign(split="all")]
        if {"5p", "10p"} <= set(per["split"]):
            pools.append(per[per["split"].isin(["5p", "10p"])].assign(split="5p+10p"))
        for key, part in pd.concat(pools, ignore_index=True).groupby(keys, sort=False):
            named = {"metric": metric, **dict(zip(keys, key if isinstance(key, tuple) else (key,)))}
            rows += [{**named, **r} for r in paired_against(part, reference, value, reps, seed)]
    return pd.DataFrame(rows)


def checkpoint_coverage(cfg, paths, ev: pd.DataFrame, encoder: Encoder, progress: bool = False) -> pd.DataFrame:
    """SBERT coverage per split of every saved GRPO checkpoint (step 0 = the init policy), on the first
    ``eval.checkpoint_rows_per_split`` evaluation situations of each split, with the step-05 sampling. Outputs are
    reused only when made by the same checkpoint of the same training run with the same settings."""
    import dataclasses

    from .config import SystemCfg
    from .device import resolve_device
    from .generate import eval_items, generate_rows, job_key, lazy, policy_fn
    from .keys import step_key, value_key
    from .runs import checkpoint_problem

    device = resolve_device(cfg)
    gen = dataclasses.replace(cfg.generate, rows_per_split=cfg.eval.checkpoint_rows_per_split, retries=0)
    ckcfg = dataclasses.replace(cfg, generate=gen)
    items = eval_items(ev, gen)
    ckpts = sorted((paths.root / "grpo" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for p in ckpts:  # a damaged checkpoint is named up front, not a loader traceback halfway through
        problem = checkpoint_problem(p)
        if problem is None:
            conf = p / "config.json" if (p / "config.json").exists() else p / "adapter_config.json"  # full / LoRA
            try:
                json.loads(conf.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                problem = f"{conf.name} unreadable ({type(exc).__name__})"
        if problem:
            raise ValueError(
                f"GRPO checkpoint {p}: {problem}; retrain step 04 (opgrpo grpo --force) or set "
                "eval.checkpoint_rows_per_split=0"
            )
    steps = [(0, cfg.train.init)] + [(int(p.name.split("-")[1]), str(p)) for p in ckpts]
    out_dir = paths.step("evaluate") / "checkpoints"
    rows = []
    for step, policy in steps:
        system = SystemCfg(f"step_{step}", policy)
        key = value_key(job_key(ckcfg, system, None), step_key(cfg, "grpo"), step)
        outs = generate_rows(
            lazy(lambda system=system: policy_fn(system, ckcfg, paths.root, device)),
            items,
            f"step_{step}",
            "default",
            gen,
            out_dir / f"step_{step}.jsonl",
            key,
            progress,
        )
        for split, grp in outs.groupby("split", sort=False):
            refs = ev[(ev["split"] == split) & ev["prompt"].isin(grp["prompt"])]
            _, summ = sbert_coverage(refs, join_candidates(refs, grp, "core"), encoder, cfg.eval.sbert_thresholds[0])
            rows.append(
                {
                    "step": step,
                    "split": split,
                    "n": summ["n"],
                    "relative_accuracy": summ["relative_accuracy"],
                    "absolute_accuracy": summ["absolute_accuracy"],
                    "threshold": summ["threshold"],
                }
            )
    return pd.DataFrame(rows)


def run_judge(cfg, paths, outputs: pd.DataFrame, ev: pd.DataFrame) -> dict[str, Any]:
    from .judge import Judge

    js = cfg.eval.judge
    judge = Judge(js, paths.root / "judge_cache")
    per_system = {}
    rows = []
    for system, grp in outputs[outputs["split"] == js.split].groupby("system", sort=False):
        order = [p for p in ev[ev["split"] == js.split]["prompt"] if p in set(grp["prompt"])]
        texts = grp.set_index("prompt")["text"]
        res = judge.judge(order, [texts.get(p) for p in order])
        per_system[system] = res.summary()
        rows += [{**r, "system": system} for r in res.scores]
    scored = sum(s["parsed"] for s in per_system.values())
    out = {
        "status": "ran",
        "model": js.model,
        "split": js.split,
        "rows": len(rows),
        "scored": scored,
        "systems": per_system,
    }
    if rows and not scored:  # every request failed or came back malformed: a failure, not a result of 0 scores
        failed = sum(s["failed"] for s in per_system.values())
        malformed = sum(s["malformed"] for s in per_system.values())
        out.update(
            status="failed",
            systems={},
            reason=f"judge: 0 of {len(rows)} scored ({failed} requests failed, "
            f"{malformed} malformed; endpoint {js.base_url}, model {js.model})",
        )
        print(f"[evaluate] LLM {out['reason']}", flush=True)
        return out
    if rows:
        from .runs import atomic_write_parquet

        atomic_write_parquet(pd.DataFrame(rows), paths.results / "eval" / "judge_per_sample.parquet")
    return out
