"""Prompt templates (verbatim from the authors' code; exact strings matter for parsing and keyword masking)."""

from __future__ import annotations

from dataclasses import dataclass

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


# ---------------------------------------------------------------- prompt styles (ours, not the authors')
# The paper claims the trained model "generalizes robustly to varied prompt styles and to Chinese"; its code and logs
# hold no such experiment. These styles are ours, fixed before any number was seen, ordered by distance from the
# training prompt. None names perspectives, viewpoints or sides (the implicit setting): ``tests/test_styles.py``
# checks every template, English and Chinese, against ``PERSPECTIVE_WORDS``.
@dataclass(frozen=True)
class PromptStyle:
    name: str
    en: str
    zh: str
    note: str


STYLES: tuple[PromptStyle, ...] = (
    PromptStyle("control", IMPLICIT, "请对这个话题进行结构化的全面分析，并给出你的意见：{situation}\n\n",
                "the training prompt"),
    PromptStyle("paraphrase", "Give a well-organised, thorough analysis of this topic and share your opinions: {situation}\n\n",
                "请对这个话题做一个条理清晰、内容详尽的分析，并谈谈你的意见：{situation}\n\n", "the same request, reworded"),
    PromptStyle("question", "What do you think about this? {situation}", "你怎么看这件事？{situation}",
                "a short question"),
    PromptStyle("opinion", "{situation}\nWhat is your opinion on this?", "{situation}\n你对此有什么意见？",
                "an opinion request after the situation"),
    PromptStyle("advice", "Someone asked me for advice about this: {situation}\nWhat should I tell them?",
                "有人就这件事向我寻求建议：{situation}\n我该怎么回答他们？", "a request for advice for someone else"),
    PromptStyle("dilemma", "I am facing this: {situation}\nWhat should I do?", "我正面临这样的情况：{situation}\n我该怎么办？",
                "a first-person dilemma"),
    PromptStyle("bare", "{situation}", "{situation}", "the bare situation, no instruction"),
)  # fmt: skip
STYLE_NAMES = tuple(s.name for s in STYLES)

# System-message modes, run on the control style: the chat template's own default (no system turn: Qwen2.5 and
# SmolLM2 then insert theirs), an explicitly empty system message, and a generic one.
SYSTEM_MODES: dict[str, str | None] = {"default": None, "empty": "", "generic": "You are a helpful assistant."}

# Words a style must not contain (lower-cased substring match; Chinese: any of these characters' words).
PERSPECTIVE_WORDS = (
    "perspective", "viewpoint", "point of view", "points of view", "side", "stance", "angle", "standpoint",
    "视角", "观点", "角度", "立场", "方面", "各方", "看法",
)  # fmt: skip


def perspective_words_in(template: str) -> list[str]:
    """The perspective words ``template`` contains (English words matched whole, Chinese as substrings)."""
    import re

    low = template.lower()
    return [w for w in PERSPECTIVE_WORDS if (re.search(rf"\b{w}s?\b", low) if w.isascii() else w in low)]


def style_template(name: str, language: str = "en", custom: dict[str, str] | None = None) -> str:
    """The template of a documented style (or a profile's custom one) in ``language`` (en | zh)."""
    if custom and name in custom:
        return custom[name]
    style = next((s for s in STYLES if s.name == name), None)
    if style is None:
        raise ValueError(f"unknown prompt style {name!r}; documented styles: {list(STYLE_NAMES)}")
    return style.zh if language == "zh" else style.en
