"""The OP-GRPO reward, exactly as the authors' code computes it, batched over a whole GRPO batch.

total = max(0, 0.3·coverage_ladder + w_f·format + tag + w_u·uniqueness_ladder)

* coverage: greedy one-to-one matching (descending cosine, ≥ 0.70) of reference segments to keyword-masked
  candidate segments; rate = matched / #references, mapped onto the 0–5 ladder;
* uniqueness: within one response, later segments with cosine ≥ 0.78 to an earlier kept one are redundant;
* format F ∈ [0, 2]: rule-based (perspective prefixes, duplicates, names echoed in the summary);
* tag: 0 for the strict two-block layout, −0.2 otherwise (then the whole response is the candidate text).

The batched scorer encodes every distinct sentence of the batch once and does one cosine product per reference
group (the G rollouts of a prompt share their references).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from .config import RewardCfg, weight_pair
from .prompts import QWEN25_DECODED, implicit
from .text import (
    Layout,
    MalformedReference,
    check_layout,
    core_and_summary,
    keywords,
    mask_sentence,
    parse_perspectives,
    perspective_name,
    split_segments,
)

COMPONENTS = ("coverage", "uniqueness", "format", "tag", "total")


# ---------------------------------------------------------------- pure terms
def coverage_ladder(rate: float) -> int:
    """0 → 0; (0, .2) → 1; [.2, .4) → 2; [.4, .6) → 3; [.6, .8) → 4; [.8, 1] → 5."""
    if rate <= 0:
        return 0
    for bucket, upper in ((1, 0.2), (2, 0.4), (3, 0.6), (4, 0.8)):
        if rate < upper:
            return bucket
    return 5


def uniqueness_ladder(rate: float) -> float:
    """rate = 1 → 1.0; > .8 → .75; > .6 → .4; else 0."""
    if rate >= 1.0:
        return 1.0
    if rate > 0.8:
        return 0.75
    if rate > 0.6:
        return 0.4
    return 0.0


def greedy_pairs(sim: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching in descending similarity while the best remaining pair is ≥ threshold:
    the (reference row, candidate column) pairs in the order they are taken.

    Equals the authors' repeated global-argmax "mutual best pairs" (ties broken in row-major order)."""
    rows, cols = np.nonzero(sim >= threshold)  # row-major order; NaN never passes
    if rows.size == 0:
        return []
    order = np.argsort(-sim[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


def greedy_matches(sim: np.ndarray, threshold: float) -> int:
    """Number of greedy one-to-one matches (see :func:`greedy_pairs`)."""
    return len(greedy_pairs(sim, threshold))


def redundant_pairs(sim: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Scan i < j; mark j redundant when sim[i, j] ≥ threshold, skipping rows i already marked. Returns every
    (kept i, redundant j) pair that marked a segment (a segment may be marked by several kept ones)."""
    above = np.triu(sim >= threshold, 1)  # NaN never passes
    redundant = np.zeros(sim.shape[0], dtype=bool)
    pairs: list[tuple[int, int]] = []
    for i in np.flatnonzero(above.any(axis=1)):  # ascending i; rows without a hit mark nothing
        if not redundant[i]:
            hits = np.flatnonzero(above[i])
            redundant[hits] = True
            pairs.extend((int(i), int(j)) for j in hits)
    return pairs


def redundant_count(sim: np.ndarray, threshold: float) -> int:
    """Number of segments marked redundant (see :func:`redundant_pairs`)."""
    return len({j for _, j in redundant_pairs(sim, threshold)})


@dataclass(slots=True)  # not frozen: built once per completion of every GRPO batch
class FormatParts:
    """The rule-based format score F ∈ [0, 2] and the parts it is made of."""

    segments: tuple[str, ...]  # segments of the core block (the whole text when there is none)
    names: tuple[str, ...]  # lower-cased perspective names found in them, in order
    perspective_ratio: float  # len(names) / len(segments) (0 without segments)
    layout_points: float  # 2 if ratio ≥ .7, 1 if ≥ .3, else 0
    duplicate_segments: int  # repeated segments (case-insensitive), beyond the first
    duplicate_names: int  # repeated names, beyond the first
    missing_from_summary: tuple[str, ...]  # names not echoed in the summary block (the whole text without one)
    echo_penalty: float  # 0 if ≥ 75 % of names are echoed, −.5 if ≥ 50 %, −.75 if ≥ 25 %, else −1 (0 without names)
    score: float  # max(layout_points − 0.5·(duplicates) + echo_penalty, 0)

    @property
    def repeat_penalty(self) -> float:
        return 0.5 * (self.duplicate_segments + self.duplicate_names)


def format_parts(text: str) -> FormatParts:
    """Rule-based format score on the core block (whole text when there is none), with its parts."""
    core, summary = core_and_summary(text)
    segments = split_segments(core)
    names = [n for n in (perspective_name(s) for s in segments) if n is not None]
    frac = len(names) / len(segments) if segments else 0.0
    fmt = (2.0 if frac >= 0.7 else 1.0 if frac >= 0.3 else 0.0) if segments else 0.0
    dup_segments = sum(c - 1 for c in Counter(s.lower() for s in segments).values())
    dup_names = sum(c - 1 for c in Counter(names).values())
    low = summary.lower()
    missing = [n for n in names if n not in low]
    if names:
        rate = (len(names) - len(missing)) / len(names)
        echo = 0.0 if rate >= 0.75 else -0.5 if rate >= 0.5 else -0.75 if rate >= 0.25 else -1.0
    else:
        echo = 0.0
    score = max(fmt - 0.5 * (dup_segments + dup_names) + echo, 0.0)
    return FormatParts(tuple(segments), tuple(names), frac, fmt, dup_segments, dup_names, tuple(missing), echo, score)


def format_score(text: str) -> float:
    """Rule-based format score F ∈ [0, 2] on the core block (whole text when there is none)."""
    return format_parts(text).score


@dataclass(frozen=True)
class RewardParts:
    """Every component of one completion's reward (ladders, raw rates and the total)."""

    coverage: int
    uniqueness: float
    format: float
    tag: float
    total: float
    coverage_rate: float
    uniqueness_rate: float
    matched: int
    n_references: int
    n_candidates: int
    valid_format: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def total_reward(
    cfg: RewardCfg, weights: tuple[float, float], coverage: int, fmt: float, tag: float, uniqueness: float
) -> float:
    """max(0, w_c·coverage + w_f·format + tag + w_u·uniqueness); ``weights`` = weight_pair(cfg)."""
    t = reward_terms(cfg, weights, coverage, fmt, tag, uniqueness)
    return max(0.0, t["coverage"] + t["format"] + t["tag"] + t["uniqueness"])


def reward_terms(
    cfg: RewardCfg, weights: tuple[float, float], coverage: int, fmt: float, tag: float, uniqueness: float
) -> dict[str, float]:
    """The weighted terms of the total, in the order they are added (uniqueness is 0 with the ablation)."""
    w_f, w_u = weights
    u = w_u * uniqueness if cfg.use_uniqueness else 0.0
    return {"coverage": cfg.coverage_weight * coverage, "format": w_f * fmt, "tag": tag, "uniqueness": u}


# ---------------------------------------------------------------- encoders
class Encoder(Protocol):
    def encode(self, sentences: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per sentence."""


class SentenceEncoder:
    """A sentence-transformers model in inference mode on a fixed device (the trainer's, during GRPO)."""

    def __init__(self, model_or_path: Any, device: str | None = None, batch_size: int = 32):
        if isinstance(model_or_path, str):
            from sentence_transformers import SentenceTransformer

            from .models import resolve

            model_or_path = SentenceTransformer(resolve(model_or_path), device=device)
        self.model = model_or_path.eval()
        self.batch_size = batch_size

    def encode(self, sentences: list[str]) -> np.ndarray:
        import torch

        if not sentences:
            return np.zeros((0, self.model.get_embedding_dimension() or 1), dtype=np.float32)
        with torch.inference_mode():
            emb = self.model.encode(
                sentences,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=len(sentences) > 20_000,  # only the large one-off encodes (mining, evaluation)
            )
        return np.asarray(emb, dtype=np.float32)


class CachedEncoder:
    """An encoder that keeps every sentence's embedding. New sentences are encoded sorted, so an embedding depends
    only on the set of sentences encoded together, never on the order of the calls."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self._emb: dict[str, np.ndarray] = {}

    def encode(self, sentences: list[str]) -> np.ndarray:
        new = sorted(set(sentences).difference(self._emb))
        if new:
            self._emb.update(zip(new, self.encoder.encode(new)))
        return np.stack([self._emb[s] for s in sentences]) if sentences else self.encoder.encode([])


# ---------------------------------------------------------------- batched scorer
def validate_reference(reference: Any, row: int, prompt: str = "") -> list[str]:
    """Reference segments for the coverage term; an empty or malformed reference is a clear error."""
    where = f"row {row}" + (f" (prompt {prompt[:60]!r})" if prompt else "")
    if not isinstance(reference, str) or not reference.strip():
        raise MalformedReference(f"{where}: empty reference")
    try:
        parse_perspectives(reference)
    except MalformedReference as exc:
        raise MalformedReference(f"{where}: malformed reference: {exc}") from exc
    return split_segments(reference)


@dataclass(slots=True)  # not frozen: built once per completion of every GRPO batch
class PreparedResponse:
    """One completion after the layout check, segmentation and keyword masking (what gets encoded)."""

    layout: Layout  # strict two-block check; ``layout.core`` is the scored text (the whole text when invalid)
    segments: tuple[str, ...]  # segments of the scored text, as written
    masked: tuple[str, ...]  # the same segments keyword-masked (these are encoded)
    format: FormatParts


def prepare_response(text: Any, kws: frozenset[str]) -> PreparedResponse:
    """Layout check, split at line-initial "In/From the perspective of", mask ``kws``; a non-string is ""."""
    text = text if isinstance(text, str) else ""
    layout = check_layout(text)
    segments = split_segments(layout.core)
    masked = tuple([mask_sentence(c, kws) for c in segments])
    return PreparedResponse(layout, tuple(segments), masked, format_parts(text))


@dataclass(slots=True)  # not frozen: built once per completion of every GRPO batch
class ResponseScore:
    """A completion's reward parts plus what produced them: the matches behind coverage, the redundant pairs
    behind uniqueness, and the similarity matrices they were read from."""

    parts: RewardParts
    response: PreparedResponse
    references: tuple[str, ...]  # reference segments (rows of ``similarity``)
    similarity: np.ndarray  # references × masked segments, cosine
    matches: tuple[tuple[int, int], ...]  # (reference row, segment column), in the greedy order
    self_similarity: np.ndarray  # masked segments × masked segments (empty when there are fewer than two)
    redundant: tuple[tuple[int, int], ...]  # (kept segment i, redundant segment j)


def score_response(
    cfg: RewardCfg,
    weights: tuple[float, float],
    response: PreparedResponse,
    references: Sequence[str],
    similarity: np.ndarray,
    cand_emb: np.ndarray | None,
) -> ResponseScore:
    """Every term of one completion from its reference × candidate cosines and its candidate embeddings
    (``cand_emb``, one row per masked segment; unused and may be None with fewer than two segments)."""
    n_ref, n_c = len(references), len(response.masked)
    pairs = greedy_pairs(similarity, cfg.coverage_threshold) if n_c else []
    rate = len(pairs) / n_ref if n_ref and n_c else 0.0
    if n_c <= 1:
        self_sim, redundant, u_rate = np.zeros((n_c, n_c)), [], 1.0
    else:
        self_sim = cand_emb @ cand_emb.T
        redundant = redundant_pairs(self_sim, cfg.uniqueness_threshold)
        u_rate = (n_c - len({j for _, j in redundant})) / n_c
    cov, uniq = coverage_ladder(rate), uniqueness_ladder(u_rate)
    valid, fmt = response.layout.valid, response.format.score
    tag = 0.0 if valid else cfg.tag_penalty
    total = total_reward(cfg, weights, cov, fmt, tag, uniq)
    parts = RewardParts(cov, uniq, fmt, tag, total, rate, u_rate, len(pairs), n_ref, n_c, valid)
    return ResponseScore(parts, response, tuple(references), similarity, tuple(pairs), self_sim, tuple(redundant))


class OPRewardScorer:
    """Scores a batch of (prompt text, completion, reference) triples; each distinct sentence is encoded once."""

    def __init__(self, encoder: Encoder, cfg: RewardCfg | None = None, agree: Sequence[Encoder] = ()):
        """``agree``: the encoders of ``reward.agree_with``; a coverage match must clear the threshold under each
        of them too (the similarity read is the smallest cosine; uniqueness stays the estimator's)."""
        self.encoder, self.agree = encoder, tuple(agree)
        self.cfg = cfg or RewardCfg()
        self.weights = weight_pair(self.cfg)  # an unknown weight setting fails here, not mid-batch

    def score(
        self,
        keyword_texts: Sequence[str],
        completions: Sequence[str],
        references: Sequence[str],
        prompts_for_errors: Sequence[str] | None = None,
    ) -> list[RewardParts]:
        """``keyword_texts[i]`` is the text whose non-stopwords mask completion i (the decoded prompt, or the
        situation alone with the ``situation`` masking option)."""
        return [d.parts for d in self.score_detailed(keyword_texts, completions, references, prompts_for_errors)]

    def score_detailed(
        self,
        keyword_texts: Sequence[str],
        completions: Sequence[str],
        references: Sequence[str],
        prompts_for_errors: Sequence[str] | None = None,
    ) -> list[ResponseScore]:
        """:meth:`score` with the matches, redundant pairs and similarity matrices of every completion."""
        n = len(completions)
        if not (len(keyword_texts) == len(references) == n):
            raise ValueError(
                f"lengths differ: {len(keyword_texts)} prompts, {n} completions, {len(references)} references"
            )
        index: dict[str, int] = {}  # every distinct sentence of the batch -> its row in the one encode call
        refs, prepared, cand_ids = self._prepare(keyword_texts, completions, references, prompts_for_errors, index)
        # float64 products: no shape-dependent rounding
        embs = [e.encode(list(index)).astype(np.float64) for e in (self.encoder, *self.agree)]
        emb = embs[0]
        out: list[ResponseScore | None] = [None] * n
        for group, members in self._groups(self._ref_keys(keyword_texts, references)).items():
            # one cosine product per reference group (the G rollouts of a prompt share their references)
            ref_segments, rid = refs[group]
            flat = [c for i in members for c in cand_ids[i]]
            sim = np.zeros((len(rid), 0))
            if flat:  # with agreement encoders: the smallest cosine of each pair
                sim = np.minimum.reduce([e[rid] @ e[flat].T for e in embs])
            offset = 0
            for i in members:
                ids = cand_ids[i]
                k = len(ids)
                cand_emb = emb[ids] if k > 1 else None  # only the uniqueness term of 2+ segments reads it
                out[i] = score_response(
                    self.cfg, self.weights, prepared[i], ref_segments, sim[:, offset : offset + k], cand_emb
                )
                offset += k
        return out  # type: ignore[return-value]

    def _prepare(
        self,
        keyword_texts: Sequence[str],
        completions: Sequence[str],
        references: Sequence[str],
        prompts_for_errors: Sequence[str] | None,
        index: dict[str, int],
    ) -> tuple[dict[str, tuple[list[str], list[int]]], list[PreparedResponse], list[list[int]]]:
        """Validate each distinct reference once (its segments and their rows in ``index``) and prepare every
        completion (with the rows of its masked segments); every sentence to encode is registered in ``index``."""

        def idx(sentence: str) -> int:
            return index.setdefault(sentence, len(index))

        kw_cache: dict[str, frozenset[str]] = {}
        refs: dict[Any, tuple[list[str], list[int]]] = {}
        prepared, cand_ids = [], []
        keys = self._ref_keys(keyword_texts, references)
        for i, (kt, text, ref, key) in enumerate(zip(keyword_texts, completions, references, keys)):
            if kt not in kw_cache:
                kw_cache[kt] = keywords(kt)
            if not isinstance(ref, str) or key not in refs:
                label = prompts_for_errors[i] if prompts_for_errors is not None else ""
                segments = validate_reference(ref, i, label)
                encoded = [mask_sentence(r, kw_cache[kt]) for r in segments] if self.cfg.mask_references else segments
                refs[key] = (segments, [idx(r) for r in encoded])
            p = prepare_response(text, kw_cache[kt])
            prepared.append(p)
            cand_ids.append([idx(m) for m in p.masked])
        return refs, prepared, cand_ids

    def _ref_keys(self, keyword_texts: Sequence[str], references: Sequence[str]) -> list[Any]:
        """What a reference's encoded segments depend on: the reference, and its masking keywords when masked."""
        if not self.cfg.mask_references:
            return list(references)
        return [(ref, kt) for kt, ref in zip(keyword_texts, references)]

    @staticmethod
    def _groups(keys: Sequence[Any]) -> dict[Any, list[int]]:
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        return groups


# ---------------------------------------------------------------- TRL reward function
def completion_text(completion: Any) -> str:
    """TRL passes strings, or a list of chat messages for conversational datasets."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return ""


def decoded_prompt(prompt: Any, tokenizer: Any = None) -> str:
    """The prompt as the authors' reward saw it (chat template applied; specials are not alphanumeric tokens)."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}\n{m['content']}\n" for m in prompt) + "assistant\n"


class OPReward:
    """TRL reward function: ``reward(prompts, completions, reference=[...], **kwargs) -> list[float]``.

    Logs the batch mean of every component through TRL's ``log_metric`` (``op_reward/coverage`` …), keeps the
    last batch's parts in ``self.last`` and returns the totals.
    """

    __name__ = "op_reward"

    def __init__(
        self,
        scorer: OPRewardScorer,
        tokenizer: Any = None,
        mask: str = "prompt",
        reference_key: str = "reference",
        situation_key: str = "situation",
    ):
        if mask not in ("prompt", "situation", "none"):
            raise ValueError(f"reward.mask: expected 'prompt', 'situation' or 'none', got {mask!r}")
        self.scorer, self.tokenizer, self.mask = scorer, tokenizer, mask
        self.reference_key, self.situation_key = reference_key, situation_key
        self.last: list[RewardParts] = []

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        if self.reference_key not in kwargs:
            raise KeyError(f"op_reward needs the dataset column {self.reference_key!r} (reference perspectives)")
        refs = kwargs[self.reference_key]
        if self.mask == "none":  # no keyword masking at all (ours: the alignment check's "unmasked" variant)
            kw_texts = [""] * len(prompts)
        elif self.mask == "situation":
            if self.situation_key not in kwargs:
                raise KeyError(f"reward.mask=situation needs the dataset column {self.situation_key!r}")
            kw_texts = list(kwargs[self.situation_key])
        else:
            kw_texts = [decoded_prompt(p, self.tokenizer) for p in prompts]
        labels = kwargs.get(self.situation_key) or [str(p)[:60] for p in prompts]
        parts = self.scorer.score(kw_texts, [completion_text(c) for c in completions], refs, labels)
        self.last = parts
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is not None and parts:
            for comp in COMPONENTS:
                log_metric(f"op_reward/{comp}", float(np.mean([getattr(p, comp) for p in parts])))
            log_metric("op_reward/valid_format", float(np.mean([p.valid_format for p in parts])))
        return [p.total for p in parts]


def build_reward(
    cfg: RewardCfg,
    encoder: Encoder | str,
    tokenizer: Any = None,
    device: str | None = None,
    agree: Sequence[Encoder | str] = (),
) -> OPReward:
    """The TRL reward of ``cfg`` with ``encoder`` (the estimator) and the encoders of ``reward.agree_with``
    (``agree``, already resolved: names, folders or encoders)."""
    load = lambda e: SentenceEncoder(e, device=device, batch_size=cfg.batch_size) if isinstance(e, str) else e  # noqa: E731
    scorer = OPRewardScorer(load(encoder), cfg, [load(e) for e in agree])
    return OPReward(scorer, tokenizer=tokenizer, mask=cfg.mask)


def keyword_text_for(situation: str, style: str = "qwen2.5") -> str:
    """Masking text for scoring stored outputs: ``qwen2.5`` = the authors' decoded chat prompt, ``implicit`` =
    the instruction without a template, ``situation`` = the situation only."""
    if style == "qwen2.5":
        return QWEN25_DECODED.format(prompt=implicit(situation))
    if style == "implicit":
        return implicit(situation)
    if style == "situation":
        return situation
    raise ValueError(f"unknown prompt style {style!r} (qwen2.5 | implicit | situation)")
