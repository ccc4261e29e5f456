"""Model shapes for the GRPO step benchmark: randomly initialised Qwen2 models built in code (no download).

A step-time / memory benchmark needs the architecture, not trained weights: a model with the same config and random
weights costs the same per token. The ``qwen2.5-*`` values are those of the published ``config.json`` of
Qwen/Qwen2.5-{0.5B,1.5B,3B}-Instruct on the Hugging Face Hub (the sizes from ``opgrpo_lib.gpu.KNOWN``, which sizes
a profile's memory and disk; no hub is reachable from our machines), checked against the published parameter counts (Qwen2.5 technical report / model cards:
0.49B / 1.54B / 3.09B total, 0.36B / 1.31B / 2.77B non-embedding) by ``tests/test_benchmarks.py`` on the meta
device. ``tiny`` is the in-code tiny LM of ``opgrpo_lib.tiny`` (its vocabulary is its tokenizer's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opgrpo_lib.gpu import KNOWN

# Shared by every Qwen2.5-*-Instruct config.json (Qwen/Qwen2.5-{0.5B,1.5B,3B}-Instruct, architectures
# ["Qwen2ForCausalLM"], torch_dtype bfloat16): 151,936-entry vocabulary (padded beyond the tokenizer's 151,665),
# SiLU MLP, RoPE theta 1e6, RMSNorm eps 1e-6, 32,768 positions, no sliding window, bos <|endoftext|> 151643,
# eos <|im_end|> 151645, and (for these three sizes) the input embedding tied to the LM head.
QWEN25_COMMON: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "tie_word_embeddings": True,
}

SIZES = (  # the size fields of a causal-LM config (also what grpo_step records of a trained model)
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)

SHAPES: dict[str, dict[str, Any]] = {
    # opgrpo_lib.tiny.build_causal_lm's architecture; vocab_size None = the tiny tokenizer's length
    "tiny": {
        "vocab_size": None,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    # the Qwen2.5-*-Instruct sizes: opgrpo_lib.gpu.KNOWN (one copy of the config.json values), plus the fields only a
    # built model needs; max_window_layers is config.json's value (inert without a sliding window)
    **{
        name: {**QWEN25_COMMON, **{k: getattr(KNOWN[hub_id], k) for k in SIZES}, "max_window_layers": window}
        for name, hub_id, window in (
            ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 21),
            ("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 21),
            ("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", 70),  # the paper's policy
        )
    },
}

# Published sizes (model cards of Qwen/Qwen2.5-*-Instruct): hub id, total and non-embedding parameters
PUBLISHED: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {"hub_id": "Qwen/Qwen2.5-0.5B-Instruct", "params": 0.49e9, "non_embedding_params": 0.36e9},
    "qwen2.5-1.5b": {"hub_id": "Qwen/Qwen2.5-1.5B-Instruct", "params": 1.54e9, "non_embedding_params": 1.31e9},
    "qwen2.5-3b": {"hub_id": "Qwen/Qwen2.5-3B-Instruct", "params": 3.09e9, "non_embedding_params": 2.77e9},
}


def qwen2_config(shape: str, vocab_size: int | None = None, **overrides: Any):
    """The ``transformers.Qwen2Config`` of ``shape`` (``vocab_size`` only fills the tiny shape's; ``overrides``
    replace any value, e.g. the tokenizer's eos/pad ids)."""
    from transformers import Qwen2Config

    if shape not in SHAPES:
        raise KeyError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
    kw = dict(SHAPES[shape])
    if kw["vocab_size"] is None:
        if vocab_size is None:
            raise ValueError(f"shape {shape!r} takes its vocabulary from the tokenizer: pass vocab_size")
        kw["vocab_size"] = vocab_size
    kw.update(overrides)
    cfg = Qwen2Config(**kw)
    cfg.architectures = ["Qwen2ForCausalLM"]
    return cfg


def count_parameters(shape: str, vocab_size: int | None = None) -> dict[str, int]:
    """Total (tied weights counted once) and non-embedding parameters, built on the ``meta`` device (no memory)."""
    import torch
    from transformers import Qwen2ForCausalLM

    cfg = qwen2_config(shape, vocab_size)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "non_embedding": total - model.get_input_embeddings().weight.numel()}


def build_model(
    shape: str, vocab_size: int | None = None, device: str = "cpu", dtype: Any = None, seed: int = 0, **overrides: Any
):
    """A randomly initialised ``Qwen2ForCausalLM`` of ``shape`` (``dtype`` e.g. ``torch.bfloat16``), initialised
    directly on ``device`` with a fixed seed."""
    import torch
    from transformers import Qwen2ForCausalLM

    cfg = qwen2_config(shape, vocab_size, **overrides)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model


def save_random_model(
    shape: str, tokenizer_dir: str | Path, out_dir: str | Path, device: str = "cpu", dtype: Any = None, seed: int = 0
) -> dict[str, Any]:
    """Build ``shape`` with the tokenizer's special-token ids, save model + tokenizer to ``out_dir`` (a plain
    folder both backends load with ``from_pretrained``) and return a description for the benchmark's JSON."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id}
    model = build_model(shape, vocab_size=len(tok), device=device, dtype=dtype, seed=seed, **ids)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    out = Path(out_dir)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    counts = {"total": sum(p.numel() for p in model.parameters())}
    counts["non_embedding"] = counts["total"] - model.get_input_embeddings().weight.numel()
    cfg = model.config
    info = {
        "shape": shape,
        "architecture": "Qwen2ForCausalLM",
        "config_source": PUBLISHED.get(shape, {}).get("hub_id", "opgrpo_lib.tiny (tiny:causal-lm)"),
        "weights": f"random init (seed {seed})",
        "dtype": str(dtype or torch.get_default_dtype()).replace("torch.", ""),
        "parameters": counts["total"],
        "non_embedding_parameters": counts["non_embedding"],
        "published_parameters": PUBLISHED.get(shape, {}).get("params"),
        "config": {k: getattr(cfg, k, None) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps")},
        "rope_theta": (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None)),
        "tokenizer_vocab_size": len(tok),
    }  # fmt: skip
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return info
