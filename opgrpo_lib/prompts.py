"""Prompt templates (verbatim from the authors' code; exact strings matter for parsing and keyword masking)."""

from __future__ import annotations

# Final SFT, RL and evaluation prompt (a single user turn through the chat template).
IMPLICIT = "Provide a structured comprehensive analysis and your opinions on this topic: {situation}\n\n"

# What the authors' reward sees as "the prompt": Qwen2.5's chat template decoded with skip_special_tokens=True,
# default system prompt included; every non-stopword here is a masking keyword.
QWEN25_DECODED = (
    "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\n{prompt}\nassistant\n"
)


# Explicit perspective prompt (the "explicit" baseline; valueprism_ex.py).
EXPLICIT = (
    "Provide a structured multi-perspectives analysis within 450 words on this topic: {situation}\n"
    "Make sure each sentence you write can represent one perspective from your analysis.\n"
    "   Output Format Example:\n"
    "   You may have many sentences for different perspectives. Make sure each of sentence follow this format: "
    "In the perspective of <Perspective name>, <your explanation to this aspect>\n"
)

# Explicit summary-format prompt (extract.py of the summary-format model; "…" is U+2026 in the original).
SUMMARY_FORMAT = (
    "Provide a structured multi-perspectives analysis on this topic: {situation}\n\n"
    "### Output Format\n"
    "<core perspectives>\n"
    "In the perspective of <Perspective name>, <your explanation to this aspect>\n"
    "\u2026 (repeat for each perspective)\n"
    "</core perspectives>\n\n"
    "<summary>\n"
    "\u2026 (one coherent paragraph weaving together all perspectives in an engaging, conversational yet informative tone)\n"
    "</summary>\n\n"
    "### Task Instructions\n"
    "1. Inside `<core perspectives>\u2026</core perspectives>`, you may have multiple sentences for different perspectives; "
    "list each perspective on its own line, using:\n"
    "   `In the perspective of {{Perspective name}}, {{your explanation to this aspect}}`\n"
    "2. Inside `<summary>\u2026</summary>`, write a single, natural paragraph that summarizes all of the above perspectives. "
    "Ensure that each sentence in your summary corresponds clearly to each of the original core perspective sentence above.\n"
    "3. Only output the two tagged sections exactly as shown\u2014do not add any extra commentary or text."
)

# Modular Pluralism (original): community LMs see the bare situation; the integrator gets their passages.
MODPLURAL_INTEGRATOR = (
    "Please comment on a given situation with the help of the following passages. Make sure to reflect diverse values "
    "and perspectives.\n\nSituation: {situation}\n\n{passages}\n\nComment:"
)

TEMPLATES = {"implicit": IMPLICIT, "explicit": EXPLICIT, "summary_format": SUMMARY_FORMAT}


def render(template: str, situation: str) -> str:
    """A named template (implicit | explicit | summary_format) or a literal one with ``{situation}``."""
    text = TEMPLATES.get(template, template)
    if "{situation}" not in text:
        raise ValueError(f"prompt template {template!r} is neither a known name nor contains {{situation}}")
    return text.format(situation=situation)


def implicit(situation: str) -> str:
    return IMPLICIT.format(situation=situation)
