"""Text rules shared by the reward, the evaluators and triplet mining (authors' parsing, exactly).

Everything here is pure string processing: no model, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# Whole response = core block, only whitespace, summary block (the authors' anchored STRICT_FORMAT_RE). Kept as
# the specification; check_layout computes the same result without its quadratic backtracking on long inputs.
LAYOUT_RE = re.compile(
    r"^\s*<core\s+perspectives>\s*(?P<core>.+?)\s*</core\s+perspectives>\s*<summary>\s*(?P<sum>.+?)\s*</summary>\s*$",
    re.IGNORECASE | re.DOTALL,
)
_OPEN_CORE_RE = re.compile(r"<core\s+perspectives>", re.IGNORECASE)
_LEADING_OPEN_CORE_RE = re.compile(r"\s*<core\s+perspectives>", re.IGNORECASE)
_CLOSE_CORE_RE = re.compile(r"</core\s+perspectives>", re.IGNORECASE)
_OPEN_SUMMARY_RE = re.compile(r"<summary>", re.IGNORECASE)
_LEADING_OPEN_SUMMARY_RE = re.compile(r"\s*<summary>", re.IGNORECASE)
_CLOSE_SUMMARY_RE = re.compile(r"</summary>", re.IGNORECASE)
_FINAL_CLOSE_SUMMARY_RE = re.compile(r"</summary>\s*\Z", re.IGNORECASE)
# Non-strict block search of the rule-based format score (the spec; computed by _first_block without backtracking).
# A segment starts at the start of the text or right after a newline followed by the perspective prefix.
SEGMENT_SPLIT_RE = re.compile(r"(?:^|\n)(?=(?:From|In) the perspective of )", re.IGNORECASE)
PERSPECTIVE_NAME_RE = re.compile(r"(?:^|\s)(?:From|In) the perspective of ([^,.\n]+)", re.IGNORECASE)
WORD_RE = re.compile(r"\b\w+\b")
# Reference line: "In the perspective of <name>, <explanation>" (name = text up to the first ", ").
REFERENCE_LINE_RE = re.compile(r"^(?:In|From) the perspective of (.*?), (.*)$", re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """NLTK's English stopword list, vendored (no download at run time)."""
    text = resources.files("opgrpo_lib.resources").joinpath("nltk_english_stopwords.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass(frozen=True)
class Layout:
    """Result of the strict layout check on one response."""

    valid: bool
    core: str  # core block if valid, else the whole (stripped) response
    summary: str  # summary block if valid, else ""


def check_layout(text: str) -> Layout:
    """Strict ``<core perspectives>…</core perspectives> <summary>…</summary>`` check (both blocks non-empty).

    Same result as ``LAYOUT_RE.match`` in linear time. The regex's lazy core group tries closing core tags left to
    right, except that a tag right after whitespace-only content is tried last (the greedy ``\\s*`` gives that
    whitespace back only after every later tag failed); the summary runs to the final ``</summary>``.
    """
    opened = _LEADING_OPEN_CORE_RE.match(text)
    final = _FINAL_CLOSE_SUMMARY_RE.search(text) if opened else None
    if opened and final:
        start = opened.end()
        ws_end = len(text) - len(text[start:].lstrip())
        closes = list(_CLOSE_CORE_RE.finditer(text, start))
        ordered = [c for c in closes if c.start() > ws_end] + [c for c in closes if c.start() == ws_end > start]
        for close in ordered:
            summary = _LEADING_OPEN_SUMMARY_RE.match(text, close.end())
            if summary is None or final.start() - summary.end() < 1:
                continue
            core, summ = text[start : close.start()].strip(), text[summary.end() : final.start()].strip()
            if core and summ:
                return Layout(True, core, summ)
            break
    return Layout(False, text.strip(), "")


def two_block(core: str, summary: str) -> str:
    """The paper's response layout from a core block and a summary (SFT targets, rebuilt stored responses)."""
    return f"<core perspectives>\n{core}\n</core perspectives>\n\n<summary>\n{summary}\n</summary>"


def split_segments(text: str) -> list[str]:
    """Split on line-initial "In/From the perspective of "; strip; drop empties (reward + reference splitter)."""
    return [s.strip() for s in SEGMENT_SPLIT_RE.split(text + "\n") if s.strip()]


def keywords(text: str) -> frozenset[str]:
    """Lower-cased alphanumeric ``\\w+`` tokens that are not NLTK English stopwords."""
    stop = stopwords()
    return frozenset(t for t in WORD_RE.findall(text.lower()) if t not in stop and t.isalnum())


def mask_sentence(sentence: str, kws: frozenset[str]) -> str:
    """Re-tokenise into ``\\w+`` tokens, replace keywords by ``[KW]``, join with single spaces."""
    return " ".join("[KW]" if tok.lower() in kws else tok for tok in WORD_RE.findall(sentence))


def _first_block(text: str, open_re: re.Pattern, close_re: re.Pattern) -> str | None:
    """Stripped text between the first opening tag and the next closing tag (``<tag>\\s*(.*?)\\s*</tag>``)."""
    opened = open_re.search(text)
    closed = close_re.search(text, opened.end()) if opened else None
    return text[opened.end() : closed.start()].strip() if closed else None


def core_and_summary(text: str) -> tuple[str, str]:
    """Non-strict block extraction for the format score; each falls back to the whole text."""
    core = _first_block(text, _OPEN_CORE_RE, _CLOSE_CORE_RE)
    summary = _first_block(text, _OPEN_SUMMARY_RE, _CLOSE_SUMMARY_RE)
    return (text if core is None else core), (text if summary is None else summary)


def perspective_name(sentence: str) -> str | None:
    m = PERSPECTIVE_NAME_RE.search(sentence)
    return m.group(1).strip().lower() if m else None


class MalformedReference(ValueError):
    """A reference answer cannot be parsed into perspectives."""


def parse_perspectives(answer: str) -> list[tuple[str, str]]:
    """Parse an OP-V2 ``answer`` into ordered (name, explanation) pairs.

    One perspective per line-initial "In (or From) the perspective of <name>, <explanation>"; the name is the
    text up to the first ", " and newlines inside an explanation become spaces (authors' NLI evaluation).
    Raises ``MalformedReference`` when any text is not covered (no silent loss).
    """
    if not isinstance(answer, str) or not answer.strip():
        raise MalformedReference("empty answer")
    out = []
    for seg in split_segments(answer):
        m = REFERENCE_LINE_RE.match(seg)
        if not m or not m.group(1).strip() or not m.group(2).strip():
            raise MalformedReference(f"segment is not 'In the perspective of <name>, <explanation>': {seg[:80]!r}")
        out.append((m.group(1).strip(), m.group(2).replace("\n", " ").strip()))
    return out


_EVAL_MARKER_RE = re.compile(r"\s*\[\d+\]")
_EVAL_REF_SPLIT_RE = re.compile(r"(?=\b(?:In|From) the perspective of\b)", re.IGNORECASE)
_EVAL_CAND_SPLIT_RE = re.compile(r"[。！？.!?]\s*")


def eval_reference_sentences(answer: str) -> list[str]:
    """SBERT-eval reference split: "[n]" markers to newlines, then split before each perspective prefix."""
    text = _EVAL_MARKER_RE.sub("\n", answer)
    return [s.strip() for s in _EVAL_REF_SPLIT_RE.split(text) if s.strip()]


def eval_candidate_sentences(text: str) -> list[str]:
    """SBERT-eval candidate split: "[n]" markers to newlines, then split on sentence punctuation."""
    text = _EVAL_MARKER_RE.sub("\n", text)
    return [s.strip() for s in _EVAL_CAND_SPLIT_RE.split(text) if s.strip()]
