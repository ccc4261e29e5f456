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


def greedy_matches(sim: np.ndarray, threshold: float) -> int:
    """Greedy one-to-one matching in descending similarity while the best remaining pair is ≥ threshold.

    Equals the authors' repeated global-argmax "mutual best pairs" (ties broken in row-major order)."""
    rows, cols = np.nonzero(sim >= threshold)  # row-major order; NaN never passes
    if rows.size == 0:
        return 0
    order = np.argsort(-sim[rows, cols], kind="stable")
    used_r, used_c, matched = set(), set(), 0
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            matched += 1
    return matched


def redundant_count(sim: np.ndarray, threshold: float) -> int:
    """Scan i < j; mark j redundant when sim[i, j] ≥ threshold, skipping rows i already marked."""
    n = sim.shape[0]
    redundant = np.zeros(n, dtype=bool)
    for i in range(n - 1):
        if not redundant[i]:
            redundant[i + 1 :] |= sim[i, i + 1 :] >= threshold
    return int(redundant.sum())


def format_score(text: str) -> float:
    """Rule-based format score F ∈ [0, 2] on the core block (whole text when there is none)."""
    core, summary = core_and_summary(text)
    segments = split_segments(core)
    names = [n for n in (perspective_name(s) for s in segments) if n is not None]
    if not segments:
        fmt = 0.0
    else:
        frac = len(names) / len(segments)
        fmt = 2.0 if frac >= 0.7 else 1.0 if frac >= 0.3 else 0.0
    dup = sum(c - 1 for c in Counter(s.lower() for s in segments).values())
    dup += sum(c - 1 for c in Counter(names).values())
    if names:
        low = summary.lower()
        rate = sum(n in low for n in names) / len(names)
        echo = 0.0 if rate >= 0.75 else -0.5 if rate >= 0.5 else -0.75 if rate >= 0.25 else -1.0
    else:
        echo = 0.0
    return max(fmt - 0.5 * dup + echo, 0.0)


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
    w_f, w_u = weights
    u = w_u * uniqueness if cfg.use_uniqueness else 0.0
    return max(0.0, cfg.coverage_weight * coverage + w_f * fmt + tag + u)


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
                sentences, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                show_progress_bar=len(sentences) > 20_000,  # only the large one-off encodes (mining, evaluation)
            )  # fmt: skip
        return np.asarray(emb, dtype=np.float32)


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


class OPRewardScorer:
    """Scores a batch of (prompt text, completion, reference) triples; each distinct sentence is encoded once."""

    def __init__(self, encoder: Encoder, cfg: RewardCfg | None = None):
        self.encoder = encoder
        self.cfg = cfg or RewardCfg()
        self.weights = weight_pair(self.cfg)  # an unknown weight setting fails here, not mid-batch

    def score(
        self, keyword_texts: Sequence[str], completions: Sequence[str], references: Sequence[str],
        prompts_for_errors: Sequence[str] | None = None,
    ) -> list[RewardParts]:  # fmt: skip
        """``keyword_texts[i]`` is the text whose non-stopwords mask completion i (the decoded prompt, or the
        situation alone with the ``situation`` masking option)."""
        n = len(completions)
        if not (len(keyword_texts) == len(references) == n):
            raise ValueError(
                f"lengths differ: {len(keyword_texts)} prompts, {n} completions, {len(references)} references"
            )
        s = self.cfg
        index: dict[str, int] = {}

        def idx(sentence: str) -> int:
            return index.setdefault(sentence, len(index))

        kw_cache: dict[str, frozenset[str]] = {}
        ref_cache: dict[str, list[int]] = {}
        rows = []
        for i in range(n):
            text = completions[i] if isinstance(completions[i], str) else ""
            ref = references[i]
            if not isinstance(ref, str) or ref not in ref_cache:
                label = prompts_for_errors[i] if prompts_for_errors is not None else ""
                ref_cache[ref] = [idx(r) for r in validate_reference(ref, i, label)]
            layout = check_layout(text)
            kt = keyword_texts[i]
            if kt not in kw_cache:
                kw_cache[kt] = keywords(kt)
            masked = [mask_sentence(c, kw_cache[kt]) for c in split_segments(layout.core)]
            rows.append((ref, [idx(m) for m in masked], layout.valid, format_score(text)))

        emb = self.encoder.encode(list(index)).astype(np.float64)  # float64 products: no shape-dependent rounding

        # one cosine product per reference group (the G rollouts of a prompt share their references)
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row[0], []).append(i)
        cover: dict[int, tuple[int, int]] = {}
        for ref, members in groups.items():
            ref_ids = ref_cache[ref]
            cand_ids = [c for i in members for c in rows[i][1]]
            sim = emb[ref_ids] @ emb[cand_ids].T if cand_ids else np.zeros((len(ref_ids), 0))
            offset = 0
            for i in members:
                k = len(rows[i][1])
                matched = greedy_matches(sim[:, offset : offset + k], s.coverage_threshold) if k else 0
                cover[i] = (matched, len(ref_ids))
                offset += k

        out = []
        for i, (_, cand_ids, valid, fmt) in enumerate(rows):
            matched, n_ref = cover[i]
            rate = matched / n_ref if n_ref and cand_ids else 0.0
            n_c = len(cand_ids)
            if n_c <= 1:
                u_rate = 1.0
            else:
                e = emb[cand_ids]
                u_rate = (n_c - redundant_count(e @ e.T, s.uniqueness_threshold)) / n_c
            cov, uniq = coverage_ladder(rate), uniqueness_ladder(u_rate)
            tag = 0.0 if valid else s.tag_penalty
            out.append(
                RewardParts(
                    cov,
                    uniq,
                    fmt,
                    tag,
                    total_reward(s, self.weights, cov, fmt, tag, uniq),
                    rate,
                    u_rate,
                    matched,
                    n_ref,
                    n_c,
                    valid,
                )
            )
        return out


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
        self, scorer: OPRewardScorer, tokenizer: Any = None, mask: str = "prompt",
        reference_key: str = "reference", situation_key: str = "situation",
    ):  # fmt: skip
        if mask not in ("prompt", "situation"):
            raise ValueError(f"reward.mask: expected 'prompt' or 'situation', got {mask!r}")
        self.scorer, self.tokenizer, self.mask = scorer, tokenizer, mask
        self.reference_key, self.situation_key = reference_key, situation_key
        self.last: list[RewardParts] = []

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        if self.reference_key not in kwargs:
            raise KeyError(f"op_reward needs the dataset column {self.reference_key!r} (reference perspectives)")
        refs = kwargs[self.reference_key]
        if self.mask == "situation":
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


def build_reward(cfg: RewardCfg, encoder: Encoder | str, tokenizer: Any = None, device: str | None = None) -> OPReward:
    if isinstance(encoder, str):
        encoder = SentenceEncoder(encoder, device=device, batch_size=cfg.batch_size)
    return OPReward(OPRewardScorer(encoder, cfg), tokenizer=tokenizer, mask=cfg.mask)


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


def grpo_like_batch(outputs: Any, n_prompts: int, group: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(situations, completions, references): ``group`` rollouts per prompt built from released outputs (a frame
    with ``prompt``, ``answer_p`` = core, ``answers`` = summary, ``answer`` = reference), perturbed as sampled
    rollouts are: subsets and reorderings of the perspective lines, a line borrowed from another situation,
    a duplicated line, a missing layout, a truncation. Rollout 0 is the released output itself."""
    rng = np.random.default_rng(seed)
    rows = outputs.iloc[:n_prompts].to_dict("records")
    pool = [line for r in outputs.to_dict("records") for line in str(r["answer_p"]).splitlines() if line.strip()]
    situations, completions, references = [], [], []
    for r in rows:
        lines = [x for x in str(r["answer_p"]).splitlines() if x.strip()]
        for g in range(group):
            if g:
                keep = [x for x in lines if rng.random() < 0.85] or lines[:1]
                rng.shuffle(keep)
                if rng.random() < 0.2:
                    keep.insert(int(rng.integers(0, len(keep) + 1)), pool[int(rng.integers(len(pool)))])
                if rng.random() < 0.15:
                    keep.append(keep[0])
            else:
                keep = lines
            text = f"<core perspectives>\n{chr(10).join(keep)}\n</core perspectives>\n\n<summary>\n{r['answers']}\n</summary>"
            if g and rng.random() < 0.15:
                text = "\n".join(keep) + "\n\n" + str(r["answers"])  # no layout
            elif g and rng.random() < 0.1:
                text = text[: int(len(text) * rng.uniform(0.3, 0.9))]  # cut at max completion length
            situations.append(r["prompt"])
            completions.append(text)
            references.append(r["answer"])
    return situations, completions, references
