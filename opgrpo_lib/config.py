"""Typed run profiles: ``configs/<profile>.yaml`` -> :class:`RunConfig`.

Defaults are the paper's (authors' code) values; a profile only states what differs. Unknown keys and wrong
types fail loudly with the dotted key in the message. Overrides are deep-merged (nested dicts or dotted keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
SPLITS = ("5p", "6p", "7p", "8p", "9p", "10p", "gt10p")


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the offending key."""


@dataclass(frozen=True)
class DataCfg:
    local_dir: str | None = "../shared/data/opv2"  # tried first (relative to the repo root); env OPGRPO_DATA_DIR wins
    download: bool = True  # fall back to the authors' repo at `commit` (hash-checked)
    base_url: str = "https://raw.githubusercontent.com/fuyu12345/OPRL-LLM"
    commit: str = "4ea283a19444059e7b5363cb64614bd281e43eef"
    train_source: str = "final_train"  # "final_train" (paper) | "carve" (offline: train on held-in test rows)
    grpo_rows: int = 12000  # the paper's GRPO uses the first 12,000 rows of final_train.csv
    eval_per_split: int | None = None  # None = every published test row; else rows kept per split (seeded)
    eval_keep_all: list[str] = field(default_factory=list)  # splits kept whole even when eval_per_split is set
    max_train_rows: int | None = None  # cap on training rows (tiny profile)


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
    coverage_threshold: float = 0.70
    uniqueness_threshold: float = 0.78
    weights: str = "final"  # "final" (w_f, w_u) = (0.1, 0.3) | "early" (0.125, 0.25)
    coverage_weight: float = 0.3
    tag_penalty: float = -0.2
    mask: str = "prompt"  # "prompt" (authors: every non-stopword of the decoded prompt) | "situation"
    use_uniqueness: bool = True  # ablation switch; the authors' reward always has it
    batch_size: int = 32  # encoder batch size (CPU: large batches pad long sentences and run ~5x slower)


@dataclass(frozen=True)
class EstimatorCfg:
    """Similarity estimator (step 02). Defaults: the authors' final training run (MNRL scale 70 = the checkpoint
    the reward used; their script says 60)."""

    judge: str = "llm"  # llm (paper: Qwen3-8B confirms pairs) | names (offline: perspective-name structure)
    judge_model: str = "Qwen/Qwen3-8B"
    judge_batch_size: int = 16
    agreement_pairs: int = 0  # >0: also run the LLM judge on this many candidate pairs and report agreement
    cross_situation: bool = True  # names judge: same-name perspective of another situation as positive
    mining_threshold: float = 0.75
    scale: float = 70.0
    batch_size: int = 32
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 2.1456771788455288e-05
    warmup_ratio: float = 0.03254893834779507
    save_steps: int = 200
    heldout_fraction: float = 0.1  # seeded share of training situations kept for evaluation
    max_situations: int | None = None
    thresholds: list[float] = field(default_factory=lambda: [round(0.60 + 0.05 * i, 2) for i in range(7)])


@dataclass(frozen=True)
class LoraCfg:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass(frozen=True)
class SummariesCfg:
    """SFT summaries (paper: Qwen3-14B, temperature 0.1, top-p 0.6, one-shot prompt)."""

    source: str = "llm"  # llm | offline (one sentence per comment; documented fallback)
    model: str = "Qwen/Qwen3-14B"
    temperature: float = 0.1
    top_p: float = 0.6
    max_new_tokens: int = 550
    batch_size: int = 16


@dataclass(frozen=True)
class TrainCfg:
    """SFT + GRPO. ``sft`` / ``grpo`` are passed to TRL's SFTConfig / GRPOConfig (keys validated against the
    installed TRL); the rest is ours."""

    backend: str = "unsloth"  # unsloth (GPU only) | hf (transformers + PEFT; CPU or GPU)
    init: str = "run:sft"  # GRPO starts from the SFT policy (or "policy" = the base model, or a path)
    lora: LoraCfg = field(default_factory=LoraCfg)
    load_in_4bit: bool = False
    use_vllm: bool = False  # unsloth fast generation (vLLM) when installed
    max_seq_length: int = 1400  # unsloth: prompt (<= 512) + completion (800)
    max_prompt_length: int = 512  # checked on the data (TRL 1.x has no max_prompt_length)
    merge_adapter: bool = False  # save merged weights instead of the LoRA adapter
    summaries: SummariesCfg = field(default_factory=SummariesCfg)
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SystemCfg:
    """One system to generate outputs for (and evaluate)."""

    name: str
    policy: str  # hub id, local path, tiny:*, or run:sft / run:grpo (the policy saved by step 03 / 04)
    prompt: str = "implicit"  # implicit | explicit | summary_format | a literal template with {situation}
    kind: str = "policy"  # policy | modplural
    score_column: str = "core"  # text scored by SBERT coverage: core (block if the layout is valid, else all) | text


@dataclass(frozen=True)
class ModPluralCfg:
    """Modular Pluralism (Feng et al. 2024): community LMs comment, an integrator LLM writes the answer."""

    base: str = "mistralai/Mistral-7B-Instruct-v0.1"
    community: list[str] = field(
        default_factory=lambda: [f"bunsenfeng/mistral-{s}_{p}" for s in ("news", "reddit") for p in ("l", "c", "r")]
    )
    # Offline variant: no adapters; the base model is steered by one system prompt per community instead.
    community_system_prompts: list[str] = field(default_factory=list)
    community_max_new_tokens: int = 200
    community_temperature: float = 1.0
    integrator: str = "Qwen/Qwen3-8B"  # the authors' re-run used Qwen3-8B; the original used the main LLM
    integrator_max_new_tokens: int = 200
    integrator_temperature: float = 0.1


@dataclass(frozen=True)
class GenerateCfg:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 1200
    batch_size: int = 8
    retries: int = 0  # extra samples while the layout is invalid (authors: 3 for OP-GRPO only; off by default)
    rows_per_split: int | None = None  # None = every evaluation row
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    systems: list[SystemCfg] = field(
        default_factory=lambda: [
            SystemCfg("op_grpo", "run:grpo"),
            SystemCfg("sft", "run:sft"),
            SystemCfg("base_implicit", "policy", "implicit", score_column="text"),
            SystemCfg("base_explicit", "policy", "explicit", score_column="text"),
            SystemCfg("modplural", "policy", kind="modplural", score_column="text"),
        ]
    )
    # Prompt-style robustness: the first system re-generated under each rewording of the implicit prompt.
    prompt_styles: dict[str, str] = field(default_factory=dict)
    modplural: ModPluralCfg = field(default_factory=ModPluralCfg)


@dataclass(frozen=True)
class JudgeCfg:
    """LLM judge (paper: GPT-4.1, first 300 rows of 5p); off unless enabled and a key is in the environment."""

    enabled: bool = False
    split: str = "5p"
    model: str = "gpt-4.1"
    base_url: str | None = None  # None = the client's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    max_rows: int = 300  # row cap (paper: first 300 rows of the 5p split)
    max_cost_usd: float = 5.0  # stop requesting once the estimated spend passes this
    usd_per_1k_input: float = 0.002
    usd_per_1k_output: float = 0.008
    max_output_tokens: int = 450
    max_retries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 120.0
    query_chars: int = 4000
    output_chars: int = 12000
    json_mode: bool = True  # ask for response_format={"type": "json_object"}


@dataclass(frozen=True)
class EvalCfg:
    sbert_thresholds: list[float] = field(default_factory=lambda: [0.70])
    nli_text: str = "text"  # output text the NLI benchmark scores: text | core | summary
    nli_batch_size: int = 32
    bootstrap_reps: int = 2000
    reference_system: str = "op_grpo"  # paired comparisons: this system vs every other
    # Coverage of saved GRPO checkpoints vs RL step (the authors evaluated steps 0/30/…/150): rows per split to
    # generate for each checkpoint (step 0 = the GRPO init policy); 0 = off.
    checkpoint_rows_per_split: int = 0
    judge: JudgeCfg = field(default_factory=JudgeCfg)


@dataclass(frozen=True)
class RunConfig:
    profile: str
    seed: int = 42
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    data: DataCfg = field(default_factory=DataCfg)
    models: ModelsCfg = field(default_factory=ModelsCfg)
    reward: RewardCfg = field(default_factory=RewardCfg)
    estimator: EstimatorCfg = field(default_factory=EstimatorCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    generate: GenerateCfg = field(default_factory=GenerateCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)

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


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'profile'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s} (allowed under {prefix or 'the top level'}: {sorted(names)})"
        )
    kwargs = {k: _check_type(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


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
    """Load ``configs/<profile>.yaml``, deep-merge ``overrides`` and validate every key and type."""
    path = profile_path(profile)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a mapping")
    if "profile" in raw:
        raise ConfigError(f"{path}: 'profile' is set from the file name, not inside it")
    raw = deep_merge(raw, _unflatten(overrides or {}))
    raw["profile"] = Path(path).stem
    return _build(RunConfig, raw, "")


def weight_pair(cfg: RewardCfg) -> tuple[float, float]:
    """(w_format, w_uniqueness): "final" = (0.1, 0.3) (the linked repo's last commit), "early" = (0.125, 0.25),
    or an explicit "w_f,w_u"."""
    pairs = {"final": (0.1, 0.3), "early": (0.125, 0.25)}
    if cfg.weights in pairs:
        return pairs[cfg.weights]
    try:
        w_f, w_u = (float(x) for x in cfg.weights.split(","))
    except ValueError:
        raise ConfigError(f"reward.weights: expected 'final', 'early' or 'w_f,w_u', got {cfg.weights!r}") from None
    return w_f, w_u
