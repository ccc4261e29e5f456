"""Typed run profiles: ``configs/<profile>.yaml`` -> :class:`RunConfig`.

Defaults are the paper's (authors' code) values; a profile only states what differs. Unknown keys and wrong
types fail loudly with the dotted key in the message. Overrides are deep-merged (nested dicts or dotted keys).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .paths import CONFIG_DIR, REPO_ROOT  # noqa: F401  (REPO_ROOT re-exported for callers)

SPLITS = ("5p", "6p", "7p", "8p", "9p", "10p", "gt10p")
Split = Literal["5p", "6p", "7p", "8p", "9p", "10p", "gt10p"]


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the offending key."""


def bounded(default: Any = dataclasses.MISSING, lo: float | None = None, hi: float | None = None, **kw: Any) -> Any:
    """A dataclass field whose numbers (or list items) must be finite and within [lo, hi], checked at load."""
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={"range": (lo, hi)}, **kw)


def throughput(default: int, lo: int = 1) -> Any:
    """A batch size or worker count that changes speed, not results: checked like ``bounded``, left out of the
    provenance keys (so changing it reuses finished outputs)."""
    return field(default=default, metadata={"range": (lo, None), "throughput": True})


def unit(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A threshold in [0, 1]."""
    return bounded(default, 0.0, 1.0, **kw)


@dataclass(frozen=True)
class DataCfg:
    local_dir: str | None = "../shared/data/opv2"  # tried first (relative to the repo root); env OPGRPO_DATA_DIR wins
    download: bool = True  # fall back to the authors' repo at `commit` (hash-checked)
    base_url: str = "https://raw.githubusercontent.com/fuyu12345/OPRL-LLM"
    commit: str = "4ea283a19444059e7b5363cb64614bd281e43eef"
    train_source: Literal["final_train", "carve"] = "final_train"  # paper | offline: train on held-in test rows
    grpo_rows: int = bounded(12000, 1)  # the paper's GRPO uses the first 12,000 rows of final_train.csv
    eval_per_split: int | None = bounded(None, 1)  # None = every published test row; else rows per split (seeded)
    eval_keep_all: list[Split] = field(default_factory=list)  # splits kept whole even when eval_per_split is set
    eval_split_rows: dict[str, int] = field(
        default_factory=dict
    )  # per-split override of eval_per_split, e.g. {5p: 200}
    max_train_rows: int | None = bounded(None, 1)  # cap on training rows (tiny profile)
    # Situations held out of the training carve (seeded) to choose settings on; never the evaluation split.
    validation_situations: int = bounded(0, 0)


@dataclass(frozen=True)
class ModelsCfg:
    encoder: str = "sentence-transformers/paraphrase-mpnet-base-v2"  # estimator base (paper)
    policy: str = "Qwen/Qwen2.5-3B-Instruct"
    nli: str | None = "microsoft/deberta-v2-xlarge-mnli"  # None: no NLI model on this machine
    eval_encoder: str = "sentence-transformers/paraphrase-mpnet-base-v2"  # independent SBERT evaluator
    tokenizer: str = "Qwen/Qwen2.5-1.5B-Instruct"  # token-efficiency counts (paper)


@dataclass(frozen=True)
class RewardCfg:
    estimator: str = "run:estimator"  # run:estimator = the model fine-tuned by step 02; else a path or hub id
    coverage_threshold: float = unit(0.70)
    uniqueness_threshold: float = unit(0.78)
    weights: str = "final"  # "final" (w_f, w_u) = (0.1, 0.3) | "early" (0.125, 0.25) | "w_f,w_u" (finite, >= 0)
    coverage_weight: float = bounded(0.3, 0.0)
    tag_penalty: float = bounded(-0.2, None, 0.0)
    mask: Literal["prompt", "situation", "none"] = "prompt"  # prompt (authors: non-stopwords of the decoded prompt)
    use_uniqueness: bool = True  # ablation switch; the authors' reward always has it
    # Named options (off = the authors' reward). mask_references: keyword-mask the reference segments too (the
    # authors mask the candidates only). agree_with: encoders under which every coverage match must also clear
    # coverage_threshold (a match counts on the smallest cosine), e.g. the base encoder beside the fine-tuned one.
    # overlong_cache: TRL's soft over-long punishment (trl.rewards, DAPO) as a second GRPO reward function, over the
    # last overlong_cache tokens of train.grpo.max_completion_length (0 = off).
    mask_references: bool = False
    agree_with: list[str] = field(default_factory=list)
    overlong_cache: int = bounded(0, 0)
    batch_size: int = throughput(32)  # encoder batch size (CPU: large batches pad long sentences, ~5x slower)


@dataclass(frozen=True)
class EstimatorCfg:
    """Similarity estimator (step 02). Defaults: the authors' final training run (MNRL scale 70 = the checkpoint
    the reward used; their script says 60)."""

    judge: Literal["llm", "names"] = "llm"  # llm (paper: Qwen3-8B confirms pairs) | names (offline: name structure)
    judge_model: str = "Qwen/Qwen3-8B"
    judge_batch_size: int = throughput(16)  # per-row seeded generation (lm.sample): the batch changes speed only
    agreement_pairs: int = bounded(0, 0)  # >0: also run the LLM judge on this many candidate pairs (agreement)
    cross_situation: bool = True  # names judge: same-name perspective of another situation as positive
    # Mining pool: references (paper: pairs within a situation's answer) | released_outputs (offline: also the
    # authors' released 3B output lines of the same situation; 5p/10p training situations only)
    candidates: Literal["references", "released_outputs"] = "references"
    output_threshold: float | None = unit(None)  # (reference, output line) pairs need masked cosine >= this; None: all
    released_dir: str | None = "../shared/data/opv2-released-outputs"  # tried first (relative to the repo root)
    mining_threshold: float = unit(0.75)
    scale: float = bounded(70.0, 0.0)
    batch_size: int = bounded(32, 2)
    epochs: float = bounded(2.0, 0.0)
    max_steps: int = bounded(-1, -1)
    learning_rate: float = bounded(2.1456771788455288e-05, 0.0)
    warmup_ratio: float = unit(0.03254893834779507)
    save_steps: int = bounded(200, 1)
    heldout_fraction: float = bounded(0.1, 0.0, 0.9)  # seeded share of training situations kept for evaluation
    max_situations: int | None = bounded(None, 1)
    thresholds: list[float] = unit(default_factory=lambda: [round(0.60 + 0.05 * i, 2) for i in range(7)])


@dataclass(frozen=True)
class LoraCfg:
    enabled: bool = True
    r: int = bounded(16, 1)
    alpha: int = bounded(32, 1)
    dropout: float = unit(0.0)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass(frozen=True)
class SummariesCfg:
    """SFT summaries (paper: Qwen3-14B, temperature 0.1, top-p 0.6, one-shot prompt)."""

    source: Literal["llm", "offline"] = "llm"  # offline: one sentence per comment (documented fallback)
    model: str = "Qwen/Qwen3-14B"
    temperature: float = bounded(0.1, 0.0)
    top_p: float = unit(0.6)
    max_new_tokens: int = bounded(550, 1)
    batch_size: int = throughput(16)


@dataclass(frozen=True)
class TrainCfg:
    """SFT + GRPO. ``sft`` / ``grpo`` are passed to TRL's SFTConfig / GRPOConfig (keys validated against the
    installed TRL); the rest is ours."""

    backend: Literal["unsloth", "hf"] = "unsloth"  # unsloth (GPU only) | hf (transformers + PEFT; CPU or GPU)
    init: str = "run:sft"  # GRPO starts from the SFT policy (or "policy" = the base model, or a path)
    lora: LoraCfg = field(default_factory=LoraCfg)
    load_in_4bit: bool = False
    # Full fine-tuning on a GPU: mixed = fp32 master weights + bf16 (fp16 without bf16) autocast, as the authors
    # (verl/FSDP mixed precision); bf16 = 16-bit weights only (half the weight/optimizer memory, but most updates at
    # lr 1e-6 round away). LoRA keeps its adapters in fp32 either way; the CPU trains in fp32.
    precision: Literal["mixed", "bf16"] = "mixed"
    # Completions per generate call within a GRPO generation batch (0 = TRL's one call for the whole batch): bounds
    # the KV cache without changing the round (same prompts, samples, optimizer steps).
    generation_chunk: int = bounded(0, 0)
    use_vllm: bool = False  # unsloth fast generation (vLLM) when installed
    max_seq_length: int = bounded(1400, 1)  # unsloth: prompt (<= 512) + completion (800)
    max_prompt_length: int = bounded(512, 1)  # checked on the data (TRL 1.x has no max_prompt_length)
    merge_adapter: bool = False  # save merged weights instead of the LoRA adapter
    summaries: SummariesCfg = field(default_factory=SummariesCfg)
    # SFT targets: paper (every explanation in full + the summary) | compact (cpu deviation: one short clause per
    # perspective, a one-sentence summary naming them; fits a small model's completion budget)
    targets: Literal["paper", "compact"] = "paper"
    compact_words: int = bounded(12, 3)  # words kept per explanation with targets: compact
    # Validation curve during GRPO: every `validation_every` steps (and at step 0) greedy outputs for the first
    # `validation_rows` validation situations, scored by the reward and the independent evaluator (0 = off).
    validation_every: int = bounded(0, 0)
    validation_rows: int = bounded(50, 1)
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SystemCfg:
    """One system to generate outputs for (and evaluate)."""

    name: str
    policy: str  # hub id, local path, tiny:*, or run:sft / run:grpo (the policy saved by step 03 / 04)
    prompt: str = "implicit"  # implicit | explicit | summary_format | a literal template with {situation}
    kind: Literal["policy", "modplural"] = "policy"
    score_column: Literal["core", "text"] = "core"  # SBERT-scored text: core (block if the layout is valid) | text
    split_rows: dict[str, int] = field(default_factory=dict)  # this system's override of generate.split_rows


@dataclass(frozen=True)
class ModPluralCfg:
    """Modular Pluralism (Feng et al. 2024): community LMs comment, an integrator LLM writes the answer."""

    base: str = "mistralai/Mistral-7B-Instruct-v0.1"
    community: list[str] = field(
        default_factory=lambda: [f"bunsenfeng/mistral-{s}_{p}" for s in ("news", "reddit") for p in ("l", "c", "r")]
    )
    # Offline variant: no adapters; the base model is steered by one system prompt per community instead.
    community_system_prompts: list[str] = field(default_factory=list)
    community_max_new_tokens: int = bounded(200, 1)
    community_temperature: float = bounded(1.0, 0.0)
    integrator: str = "Qwen/Qwen3-8B"  # the authors' re-run used Qwen3-8B; the original used the main LLM
    integrator_max_new_tokens: int = bounded(200, 1)
    integrator_temperature: float = bounded(0.1, 0.0)


@dataclass(frozen=True)
class GenerateCfg:
    temperature: float = bounded(0.7, 0.0)  # 0 = greedy
    top_p: float = bounded(0.9, 0.0, 1.0)
    max_new_tokens: int = bounded(1200, 1)
    batch_size: int = throughput(8)
    retries: int = bounded(0, 0)  # extra samples while the layout is invalid (authors: 3 for OP-GRPO only)
    rows_per_split: int | None = bounded(None, 1)  # None = every evaluation row
    splits: list[Split] = field(default_factory=lambda: list(SPLITS))
    split_rows: dict[str, int] = field(default_factory=dict)  # per-split override of rows_per_split, e.g. {5p: 100}
    systems: list[SystemCfg] = field(
        default_factory=lambda: [
            SystemCfg("op_grpo", "run:grpo"),
            SystemCfg("sft", "run:sft"),
            SystemCfg("base_implicit", "policy", "implicit", score_column="text"),
            SystemCfg("base_explicit", "policy", "explicit", score_column="text"),
            SystemCfg("modplural", "policy", kind="modplural", score_column="text"),
        ]
    )
    modplural: ModPluralCfg = field(default_factory=ModPluralCfg)


@dataclass(frozen=True)
class JudgeCfg:
    """LLM judge (paper: GPT-4.1, first 300 rows of 5p); off unless enabled and a key is in the environment."""

    enabled: bool = False
    split: Split = "5p"
    model: str = "gpt-4.1"
    base_url: str | None = None  # None = the client's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    max_rows: int = bounded(300, 1)  # row cap (paper: first 300 rows of the 5p split)
    max_cost_usd: float = bounded(5.0, 0.0)  # stop requesting once the estimated spend passes this
    usd_per_1k_input: float = bounded(0.002, 0.0)
    usd_per_1k_output: float = bounded(0.008, 0.0)
    max_output_tokens: int = bounded(450, 1)
    max_retries: int = bounded(4, 0)  # the OpenAI client's own retries (exponential backoff)
    timeout_s: float = bounded(120.0, 0.0)
    query_chars: int = bounded(4000, 1)
    output_chars: int = bounded(12000, 1)
    json_mode: bool = True  # ask for response_format={"type": "json_object"}


@dataclass(frozen=True)
class EvalCfg:
    sbert_thresholds: list[float] = unit(default_factory=lambda: [0.70])
    nli_text: Literal["text", "core", "summary"] = "text"  # output text the NLI benchmark scores
    nli_batch_size: int = throughput(32)
    bootstrap_reps: int = bounded(2000, 100)
    reference_system: str = "op_grpo"  # paired comparisons: this system vs every other
    # Coverage of saved GRPO checkpoints vs RL step (the authors evaluated steps 0/30/…/150): rows per split to
    # generate for each checkpoint (step 0 = the GRPO init policy); 0 = off.
    checkpoint_rows_per_split: int = bounded(0, 0)
    # Also score SBERT coverage with the reward's own estimator (what the authors reported), beside the independent one.
    estimator_coverage: bool = False
    judge: JudgeCfg = field(default_factory=JudgeCfg)


@dataclass(frozen=True)
class AlignmentCfg:
    """The reward–evaluator alignment check (notebook 03, after SFT; the standard test of a learned reward before
    RL): ``samples`` completions per validation situation from ``policy``, sampled as GRPO samples them (its
    temperature, top-p and completion budget, seeded per row), each scored by every reward variant and by the
    independent evaluator. 0 samples = off."""

    samples: int = bounded(0, 0)
    rows: int = bounded(40, 1)  # the first validation situations (never the evaluation split)
    policy: str = "run:sft"  # run:sft | run:grpo | policy | a path or hub id
    # authors | mask_references | unmasked (no keyword masking) | agree_base (the estimator and models.encoder agree)
    variants: list[str] = field(default_factory=lambda: ["authors", "mask_references", "unmasked", "agree_base"])
    bootstrap_reps: int = bounded(2000, 100)


@dataclass(frozen=True)
class StylesCfg:
    """Prompt-style generalisation (ours, pre-registered; README "Beyond the training prompt"; notebook 05 after the
    generation): every style in ``styles`` (documented in ``prompts.STYLES``, or a template of ``custom``) and, on
    the control, every system-message mode, for each of ``systems`` on the same situations (the first
    ``split_rows`` of each split) with the same per-row seeds, scored by the independent evaluator. [] = off."""

    styles: list[str] = field(default_factory=list)
    # name -> an English template with {situation} and no perspective words (English only: no Chinese condition)
    custom: dict[str, str] = field(default_factory=dict)
    system_modes: list[str] = field(default_factory=lambda: ["default"])  # default | empty | generic
    systems: list[str] = field(default_factory=lambda: ["op_grpo", "sft", "base_implicit"])
    # the systems the non-default system-message modes run for (None: every system of ``systems``)
    mode_systems: list[str] | None = None
    split_rows: dict[str, int] = field(default_factory=lambda: {"5p": 20, "10p": 20})
    languages: list[Literal["en", "zh"]] = field(default_factory=lambda: ["en"])
    bootstrap_reps: int = bounded(2000, 100)


@dataclass(frozen=True)
class AuthorsCfg:
    """Step 08: the authors' own per-row SBERT evaluation logs (``opgrpo_lib/steps/authors.py``, ``authors/``)."""

    enabled: bool = True
    local_dir: str | None = "../shared/data/authors-eval-logs"  # tried first; env OPGRPO_AUTHORS_LOGS wins
    download: bool = True  # else the pinned commit of the authors' repository, file by file (git blob sha1)
    base_url: str = "https://raw.githubusercontent.com/fuyu12345/Overton-Pluralistic-GRPO"
    commit: str = "f1561f5adeb94a24f76a495ae58dc9118c9f0974"
    max_logs: int | None = bounded(None, 1)  # None = every log in the manifest; else the first N (tiny)
    bootstrap_reps: int = bounded(2000, 100)
    # Re-scoring the logged candidate sentences with evaluators the authors did not use (same protocol).
    rescore_encoders: list[str] = field(default_factory=list)  # sentence-transformers ids / paths / tiny:*
    rescore_nli: str | None = None  # an NLI model id (the NLI protocol on the logged sentences); None = off
    rescore_threshold: float = unit(0.70)
    # "headline" (best 3B, its baselines, the RL-step pairs), "rl_step" (the RL-step pairs and best 3B vs Qwen3-8B
    # explicit), "all" or system names
    rescore_systems: list[str] = field(default_factory=lambda: ["headline"])
    rescore_splits: list[Split] = field(default_factory=lambda: ["5p", "10p"])
    rescore_rows_per_split: int | None = bounded(None, 1)  # None = every logged situation; else a seeded subset
    tokenizer: str | None = None  # token counts of the candidate sentences; None = words only


# Sentence encoders known to read Chinese (the Chinese arm's evaluator must be one of them, or an in-code tiny:*
# model, whose byte-level tokenizer reads any text): an English-only evaluator scores Chinese near chance.
MULTILINGUAL_ENCODERS = (
    "intfloat/multilingual-e5-small",
    "intfloat/multilingual-e5-base",
    "intfloat/multilingual-e5-large",
    "sentence-transformers/paraphrase-multilingual-mpnet-base-v2",
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
    "sentence-transformers/distiluse-base-multilingual-cased-v2",
    "sentence-transformers/LaBSE",
    "BAAI/bge-m3",
)

# NLI classifiers trained on XNLI (Chinese among its 15 languages): the Chinese arm's NLI protocol needs one of them
# (or tiny:nli); the paper's English MNLI model reads Chinese as noise.
MULTILINGUAL_NLI = (
    "MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7",
    "MoritzLaurer/mDeBERTa-v3-base-mnli-xnli",
    "joeddav/xlm-roberta-large-xnli",
)


@dataclass(frozen=True)
class TranslateCfg:
    """The Chinese arm (``opgrpo translate``, notebook 05): the first ``split_rows`` evaluation situations of each of
    ``splits``, translated by ``model`` field by field (situation, each perspective's name and explanation), greedy,
    thinking off; rows failing a check (back-translation similarity under ``models.eval_encoder``, share of Chinese
    characters, perspective count) are dropped and counted. ``zh_evaluator`` is calibrated against the English
    evaluator on the translated references, and ``zh_nli``'s decisions are compared with ``models.nli``'s; below
    ``min_kappa`` the Chinese numbers of that protocol are flagged unvalidated."""

    source: str = "eval"  # eval (the evaluation situations) | a parallel JSONL fixture (repo-relative path; tiny)
    model: str = "Qwen/Qwen3-8B"  # hub id / path, or fixture:<JSONL> (its human translations stand in for the LLM)
    splits: list[Split] = field(default_factory=lambda: ["5p", "10p"])
    split_rows: int = bounded(100, 1)  # situations per split, the first in evaluation order (as generate's)
    max_new_tokens: int = bounded(512, 1)
    batch_size: int = throughput(16)
    back_translation_min: float = unit(0.80)  # min cosine (English evaluator) of a field and its back-translation
    zh_share_min: float = unit(0.60)  # min share of CJK characters among the letters of the translated fields
    zh_evaluator: str = "sentence-transformers/paraphrase-multilingual-mpnet-base-v2"
    min_kappa: float = bounded(0.6, -1.0, 1.0)  # Cohen's kappa on the held-out half below this: unvalidated
    # NLI on Chinese outputs (premise: the translated explanation; hypothesis: a Chinese-split output sentence); its
    # entailment decisions are checked against ``models.nli``'s on the English pairs. None: no Chinese NLI.
    zh_nli: str | None = "MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7"


@dataclass(frozen=True)
class RunConfig:
    profile: str
    seed: int = bounded(42, 0)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # cuda without a GPU fails when a step starts
    data: DataCfg = field(default_factory=DataCfg)
    models: ModelsCfg = field(default_factory=ModelsCfg)
    reward: RewardCfg = field(default_factory=RewardCfg)
    estimator: EstimatorCfg = field(default_factory=EstimatorCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    generate: GenerateCfg = field(default_factory=GenerateCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    authors: AuthorsCfg = field(default_factory=AuthorsCfg)
    alignment: AlignmentCfg = field(default_factory=AlignmentCfg)
    styles: StylesCfg = field(default_factory=StylesCfg)
    translate: TranslateCfg = field(default_factory=TranslateCfg)

    @property
    def config_hash(self) -> str:
        return config_hash(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_hash(cfg: RunConfig) -> str:
    """Stable sha256 (first 16 hex chars) of the canonical JSON of the resolved config."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _unflatten(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override")
        if isinstance(value, dict):
            value = _unflatten(value)
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_range(value: Any, lo: float | None, hi: float | None, key: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}: {v!r} is not a finite number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"{key}: {v!r} is outside the allowed range {span}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'profile'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s} (allowed under {prefix or 'the top level'}: {sorted(fields)})"
        )
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _check_type(v, hints[k], key)
        if "range" in fields[k].metadata:
            _check_range(kwargs[k], *fields[k].metadata["range"], key)
    return cls(**kwargs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that rejects a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; syntax errors and duplicate keys name the file and line."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (undecodable byte at offset {exc.start})") from None


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def profile_path(profile: str | Path) -> Path:
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown profile {profile!r}; available: {available_profiles()}")
    return path


def load_profile(profile: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load ``configs/<profile>.yaml``, deep-merge ``overrides`` and validate every key, type, choice and range."""
    path = profile_path(profile)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a mapping")
    if "profile" in raw:
        raise ConfigError(f"{path}: 'profile' is set from the file name, not inside it")
    raw = deep_merge(raw, _unflatten(overrides or {}))
    raw["profile"] = Path(path).stem
    cfg = _build(RunConfig, raw, "")
    validate(cfg)
    return cfg


_FLOATISH = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
# TRL / transformers settings that change speed or progress display only (left out of the provenance keys).
TRAINER_THROUGHPUT = frozenset(
    {
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_prefetch_factor",
        "dataloader_persistent_workers",
        "disable_tqdm",
    }
)
# Ranges of the TRL / transformers settings a profile is likely to set: (lo, hi, lo excluded). Every other number
# must at least be finite. max_steps is -1 (train by epochs) or >= 1.
TRAINER_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "learning_rate": (0, None, True), "num_train_epochs": (0, None, True), "max_steps": (1, None, False),
    "per_device_train_batch_size": (1, None, False), "per_device_eval_batch_size": (1, None, False),
    "gradient_accumulation_steps": (1, None, False), "warmup_ratio": (0, 1, False), "warmup_steps": (0, None, False),
    "weight_decay": (0, None, False), "max_grad_norm": (0, None, False), "adam_beta1": (0, 1, False),
    "adam_beta2": (0, 1, False), "adam_epsilon": (0, None, True), "logging_steps": (0, None, True),
    "save_steps": (0, None, True), "save_total_limit": (1, None, False), "seed": (0, None, False),
    "max_length": (1, None, False), "beta": (0, None, False), "epsilon": (0, None, False),
    "epsilon_high": (0, None, False), "temperature": (0, None, True), "top_p": (0, 1, True), "top_k": (0, None, False),
    "min_p": (0, 1, False), "repetition_penalty": (0, None, True), "num_generations": (2, None, False),
    "max_completion_length": (1, None, False), "num_iterations": (1, None, False),
    "steps_per_generation": (1, None, False), "generation_batch_size": (1, None, False),
}  # fmt: skip
_TRAINER_CLASSES = {
    "sft": ("trl/trainer/sft_config.py", "SFTConfig"),
    "grpo": ("trl/trainer/grpo_config.py", "GRPOConfig"),
}
_BASES = (("trl/trainer/base_config.py", "_BaseConfig"), ("transformers/training_args.py", "TrainingArguments"))


@functools.cache
def _trainer_class(section_name: str) -> dict[str, tuple[str, Any]] | None:
    """Fields of the installed TRL's ``SFTConfig`` / ``GRPOConfig`` (its bases included) -> (annotation text, default
    when it is a literal, else ``MISSING``), read from TRL's and transformers' source without importing them (loading
    a profile stays torch-free); None when TRL is not installed."""
    import ast
    from importlib.util import find_spec

    roots = {}
    for pkg in ("trl", "transformers"):
        spec = find_spec(pkg)
        if spec is None or not spec.origin:
            return None
        roots[pkg] = Path(spec.origin).parent.parent
    out: dict[str, tuple[str, Any]] = {}
    found = set()
    for rel, cls in (_TRAINER_CLASSES[section_name], *_BASES):
        path = roots[rel.split("/")[0]] / rel
        node = (
            next((n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == cls), None)
            if path.exists()
            else None
        )
        found.update([cls] if node else [])
        for item in node.body if node else []:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                name, ann = item.target.id, ast.unparse(item.annotation)
                if not name.startswith("_") and "ClassVar" not in ann:
                    out.setdefault(name, (ann, _literal_default(item.value)))  # the subclass's field wins
    if not {_TRAINER_CLASSES[section_name][1], "TrainingArguments"} <= found:
        raise ConfigError(
            f"train.{section_name}: the installed TRL moved {_TRAINER_CLASSES[section_name][1]} "
            "(its fields cannot be read to check the profile); install the trl range of pyproject.toml"
        )
    return out


def _literal_default(value: Any) -> Any:
    """The default of a dataclass field as written in source (``= 8`` or ``field(default=8, ...)``)."""
    import ast

    if isinstance(value, ast.Call):
        value = next((k.value for k in value.keywords if k.arg == "default"), None)
    try:
        return ast.literal_eval(value) if value is not None else dataclasses.MISSING
    except ValueError:
        return dataclasses.MISSING


def trainer_fields(section_name: str) -> dict[str, str] | None:
    """Field -> annotation text of the installed TRL's config for ``train.<section_name>`` (None: no TRL)."""
    fields = _trainer_class(section_name)
    return None if fields is None else {k: ann for k, (ann, _) in fields.items()}


def trl_value(section: dict[str, Any], section_name: str, key: str) -> Any:
    """A TRL setting where no TRL config is built (profile checks, SFT targets, validation budget): the profile's
    value, else the installed TRL's default."""
    if key in section:
        return section[key]
    default = (_trainer_class(section_name) or {}).get(key, (None, dataclasses.MISSING))[1]
    if default is dataclasses.MISSING:
        raise ConfigError(f"train.{section_name}.{key}: not set and the installed TRL has no literal default for it")
    return default


def check_grpo_batches(grpo: dict[str, Any], world_size: int | None = None) -> None:
    """TRL's cross-field rules of GRPOConfig (``__post_init__``: the generation batch is whole groups of
    ``num_generations`` completions) at load, so a bad combination fails before steps 01–03 run, not at 04. The
    processes are torchrun's / accelerate's ``WORLD_SIZE`` (1 in a plain run)."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    get = functools.partial(trl_value, grpo, "grpo")
    per_step = get("per_device_train_batch_size") * world_size
    gen_batch, spg = grpo.get("generation_batch_size"), grpo.get("steps_per_generation")
    if gen_batch is not None and spg is not None:
        raise ConfigError("train.grpo: generation_batch_size and steps_per_generation cannot both be set")
    if gen_batch is not None and gen_batch % per_step:
        raise ConfigError(
            f"train.grpo.generation_batch_size: {gen_batch} is not a multiple of the global batch "
            f"per_device_train_batch_size x processes = {per_step}"
        )
    if gen_batch is None:
        gen_batch = per_step * (spg if spg is not None else get("gradient_accumulation_steps"))
    n = get("num_generations")
    if n < 2 or gen_batch % n:
        raise ConfigError(
            f"train.grpo.num_generations: {n} must be >= 2 and divide the generation batch "
            f"({gen_batch} completions per generation step), as TRL's GRPOConfig requires"
        )


def _trainer_type_ok(value: Any, annotation: str) -> bool:
    """Loose check of a value against a TRL annotation: only plain int/float/bool/str annotations are enforced."""
    names = set(re.findall(r"[A-Za-z_]+", annotation)) - {"Optional", "Union", "None", "typing"}
    if value is None:
        return "None" in annotation or "Optional" in annotation
    if not names <= {"int", "float", "bool", "str"}:
        return True  # enums, lists, dicts, unions of those: TRL checks them itself
    if isinstance(value, bool):
        return "bool" in names
    if isinstance(value, int):
        return bool(names & {"int", "float"})
    if isinstance(value, float):
        return "float" in names
    return isinstance(value, str) and "str" in names


def check_trainer_section(section_name: str, values: dict[str, Any]) -> None:
    """``train.sft`` / ``train.grpo`` at load: every key a field of the installed TRL config (with the close match),
    values of the declared type, finite and within range."""
    fields = trainer_fields(section_name)
    cls = _TRAINER_CLASSES[section_name][1]
    for key, value in values.items():
        dotted = f"train.{section_name}.{key}"
        if isinstance(value, str) and _FLOATISH.match(value):
            raise ConfigError(f"{dotted}: {value!r} is a string in YAML; write it with a dot (e.g. 1.0e-4)")
        if fields is not None and key not in fields:
            import difflib

            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{dotted}: not a field of the installed TRL's {cls}{hint}")
        if fields is not None and not _trainer_type_ok(value, fields[key]):
            raise ConfigError(f"{dotted}: expected {fields[key]}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{dotted}: {value!r} is not a finite number")
        if key in TRAINER_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi, open_lo = TRAINER_RANGES[key]
            if key == "max_steps" and value == -1:
                continue
            if (lo is not None and (value < lo or (open_lo and value == lo))) or (hi is not None and value > hi):
                span = (
                    f"{'(' if open_lo else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                )
                extra = " (or -1: train by epochs)" if key == "max_steps" else ""
                raise ConfigError(f"{dotted}: {value!r} is outside the allowed range {span}{extra}")


def validate(cfg: RunConfig) -> None:
    """Checks that span several keys or need parsing; every message names the dotted key and allowed values."""
    from .prompts import TEMPLATES

    weight_pair(cfg.reward)
    check_trainer_section("sft", cfg.train.sft)
    check_trainer_section("grpo", cfg.train.grpo)
    if trainer_fields("grpo") is not None:
        check_grpo_batches(cfg.train.grpo)
    names = [s.name for s in cfg.generate.systems]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"generate.systems: system name {dup[0]!r} is used twice")
    for i, s in enumerate(cfg.generate.systems):
        if s.prompt not in TEMPLATES and "{situation}" not in s.prompt:
            raise ConfigError(
                f"generate.systems[{i}].prompt: {s.prompt!r} is neither one of {sorted(TEMPLATES)} "
                "nor a template containing {situation}"
            )
    _check_split_counts("data.eval_split_rows", cfg.data.eval_split_rows)
    _check_split_counts("generate.split_rows", cfg.generate.split_rows)
    for i, system in enumerate(cfg.generate.systems):
        _check_split_counts(f"generate.systems[{i}].split_rows", system.split_rows)
    if names and cfg.eval.reference_system not in names:
        raise ConfigError(f"eval.reference_system: {cfg.eval.reference_system!r} is not one of the systems {names}")
    _check_agreement(cfg.reward)
    _check_alignment(cfg.alignment)
    _check_styles(cfg)
    _check_translate(cfg)
    budget = trl_value(cfg.train.grpo, "grpo", "max_completion_length") if trainer_fields("grpo") else None
    if budget is not None and cfg.reward.overlong_cache >= budget:
        raise ConfigError(
            f"reward.overlong_cache: {cfg.reward.overlong_cache} must be below "
            f"train.grpo.max_completion_length ({budget})"
        )
    for key, value in (("train.init", cfg.train.init), ("reward.estimator", cfg.reward.estimator)):
        if value.startswith("run:") and value not in ("run:sft", "run:grpo", "run:estimator"):
            raise ConfigError(f"{key}: {value!r} is not one of run:sft, run:grpo, run:estimator (or a path / hub id)")


ALIGNMENT_VARIANTS = ("authors", "mask_references", "unmasked", "agree_base")


def _check_split_counts(key: str, counts: dict) -> None:
    """A mapping of split -> row count, as ``data.eval_split_rows`` and ``generate.split_rows`` take."""
    for split, n in counts.items():
        if split not in SPLITS or not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"{key}.{split}: expected a split of {list(SPLITS)} -> a count >= 1, got {n!r}")


def _check_alignment(cfg: AlignmentCfg) -> None:
    bad = [v for v in cfg.variants if v not in ALIGNMENT_VARIANTS]
    if bad or not cfg.variants:
        raise ConfigError(f"alignment.variants: {bad or cfg.variants!r}: expected some of {list(ALIGNMENT_VARIANTS)}")
    if cfg.policy.startswith("run:") and cfg.policy not in ("run:sft", "run:grpo"):
        raise ConfigError(f"alignment.policy: {cfg.policy!r} is not run:sft or run:grpo (or policy, a path, a hub id)")
    if cfg.samples == 1:
        raise ConfigError("alignment.samples: 1 sample per situation cannot rank anything: 0 (off) or >= 2")


def _check_styles(cfg: RunConfig) -> None:
    """Style names, custom templates (``{situation}``, no perspective words), modes and systems."""
    from .prompts import STYLE_NAMES, SYSTEM_MODES, perspective_words_in

    st = cfg.styles
    for name, template in st.custom.items():
        if name in STYLE_NAMES or not isinstance(template, str) or "{situation}" not in template:
            raise ConfigError(f"styles.custom.{name}: a new style name with a template containing {{situation}}")
        words = perspective_words_in(template)
        if words:
            raise ConfigError(f"styles.custom.{name}: names {words[0]!r}; a style must not mention perspectives")
    if not st.styles:
        return
    unknown = [n for n in st.styles if n not in STYLE_NAMES and n not in st.custom]
    if unknown or "control" not in st.styles:
        raise ConfigError(
            f"styles.styles: {unknown or st.styles!r}: expected 'control' and others of {list(STYLE_NAMES)} or "
            "styles.custom"
        )
    bad = [m for m in st.system_modes if m not in SYSTEM_MODES]
    if bad or "default" not in st.system_modes:
        want = f"expected 'default' and some of {list(SYSTEM_MODES)}"
        raise ConfigError(f"styles.system_modes: {bad or st.system_modes!r}: {want}")
    policies = {s.name for s in cfg.generate.systems if s.kind == "policy"}
    missing = [n for n in st.systems if n not in policies]
    if missing or not st.systems:
        want = f"expected policy systems of generate.systems {sorted(policies)}"
        raise ConfigError(f"styles.systems: {missing or st.systems!r}: {want}")
    if st.mode_systems is not None and (not st.mode_systems or set(st.mode_systems) - set(st.systems)):
        raise ConfigError(f"styles.mode_systems: {st.mode_systems!r}: expected some of styles.systems {st.systems}")
    _check_split_counts("styles.split_rows", st.split_rows)


def chinese_arm(cfg: RunConfig) -> bool:
    """The Chinese arm (the translate step and the Chinese style conditions) is on when a style language is zh."""
    return bool(cfg.styles.styles) and "zh" in cfg.styles.languages


def _check_translate(cfg: RunConfig) -> None:
    """The Chinese arm's form: fixtures exist, a fixture translator only reads its own English, a multilingual
    evaluator and NLI model for Chinese text (never the English-only ones)."""
    tc = cfg.translate
    if not chinese_arm(cfg):
        return
    fixture = tc.model.removeprefix("fixture:") if tc.model.startswith("fixture:") else None
    files = [("translate.source", tc.source)] if tc.source != "eval" else []
    for key, path in files + ([("translate.model", fixture)] if fixture is not None else []):
        if not path or not (REPO_ROOT / path).is_file():
            raise ConfigError(f"{key}: {path!r}: no such file (paths are relative to the repository root)")
    if fixture is not None and (REPO_ROOT / fixture).resolve() != (REPO_ROOT / tc.source).resolve():
        raise ConfigError(
            f"translate.model: {tc.model!r} translates only its own English: set translate.source to the same file"
        )
    english = {"models.eval_encoder": cfg.models.eval_encoder, "models.nli": cfg.models.nli}
    for key, name, known, same in (
        ("translate.zh_evaluator", tc.zh_evaluator, MULTILINGUAL_ENCODERS, "models.eval_encoder"),
        ("translate.zh_nli", tc.zh_nli, MULTILINGUAL_NLI, "models.nli"),
    ):
        if name is None or name.startswith("tiny:") or name in known:
            continue
        which = f" ({same})" if name == english[same] else ""
        raise ConfigError(
            f"{key}: {name!r}{which} is not a known multilingual model and cannot read Chinese; "
            f"use one of {list(known)}"
        )


def _check_agreement(cfg: RewardCfg) -> None:
    """The form of ``reward.agree_with`` (whether each model is on this machine: ``models.check_agreement``, run
    before any step; importing the model resolver here would put it in every step's key)."""
    for i, name in enumerate(cfg.agree_with):
        if not isinstance(name, str) or not name or (name.startswith("run:") and name != "run:estimator"):
            raise ConfigError(
                f"reward.agree_with[{i}]: expected a model name, a folder or run:estimator, got {name!r}"
            )


def weight_pair(cfg: RewardCfg) -> tuple[float, float]:
    """(w_format, w_uniqueness): "final" = (0.1, 0.3) (the linked repo's last commit), "early" = (0.125, 0.25),
    or an explicit "w_f,w_u" of finite non-negative numbers."""
    pairs = {"final": (0.1, 0.3), "early": (0.125, 0.25)}
    if cfg.weights in pairs:
        return pairs[cfg.weights]
    try:
        w_f, w_u = (float(x) for x in cfg.weights.split(","))
    except ValueError:
        raise ConfigError(f"reward.weights: expected 'final', 'early' or 'w_f,w_u', got {cfg.weights!r}") from None
    if not all(math.isfinite(w) and w >= 0 for w in (w_f, w_u)):
        raise ConfigError(f"reward.weights: {cfg.weights!r}: both weights must be finite and >= 0")
    return w_f, w_u


def section(cfg: RunConfig, dotted: str) -> Any:
    """The value at a dotted key of the resolved config (``train.grpo``, ``models.policy``...) as plain data."""
    node: Any = cfg.to_dict()
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None  # a TRL key the profile leaves at TRL's default
    return node
