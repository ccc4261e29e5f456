"""Prompt templates (verbatim from the authors' code; exact strings matter for parsing and keyword masking)."""

from __future__ import annotations

# Final SFT, RL and evaluation prompt (a single user turn through the chat template).
IMPLICIT = "Provide a structured comprehensive analysis and your opinions on this topic: {situation}\n\n"

# What the authors' reward sees as "the prompt": Qwen2.5's chat template decoded with skip_special_tokens=True,
# default system prompt included; every non-stopword here is a masking keyword.
QWEN25_DECODED = (
    "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\n{prompt}\nassistant\n"
)


def implicit(situation: str) -> str:
    return IMPLICIT.format(situation=situation)


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]
