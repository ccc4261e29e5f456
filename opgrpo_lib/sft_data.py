"""SFT targets (step 03's data): the paper's core perspectives + summary, the summaries themselves (an LLM with the
paper's sampling, or the documented offline fallback) and the compact targets of the cpu profile."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig
from .prompts import implicit
from .text import two_block

SUMMARY_INSTRUCTION = (
    "Please summarize the following value-based comments into a natural paragraph that reflects multiple perspectives "
    "on the situation. Ensure that each sentence in your summary corresponds clearly to each of the original comments.\n"
    "Make sure your summary is engaging and written in a conversational yet informative tone, making it accessible and "
    "thought-provoking for the reader.\nUse the example below to guide your style and format."
)
# One-shot example in the authors' layout. Their example text (a 10-comment "sleeping bag" case) is not public in
# full, so this one is ours (documented deviation).
SUMMARY_EXAMPLE = (
    "### Example\n**Question:** Returning a lost wallet with all the money inside\n**Comments:**\n"
    "1. In the perspective of Honesty, Returning the wallet intact reflects truthfulness and integrity.\n"
    "2. In the perspective of Empathy, The owner is likely worried, and returning it relieves their distress.\n"
    "3. In the perspective of Duty to respect property, People have a duty not to keep what belongs to others.\n"
    "**Summary:** Returning a lost wallet with all its money is first of all an act of honesty and integrity. "
    "It is also an act of empathy, since the owner is probably anxious and will be relieved to get it back. "
    "And it honours a basic duty to respect property, because what belongs to others is not ours to keep.\n\n"
)


def core_block(perspectives: list[dict]) -> str:
    return "\n".join(f"In the perspective of {p['name']}, {p['explanation']}" for p in perspectives)


def sft_target(perspectives: list[dict], summary: str) -> str:
    return two_block(core_block(perspectives), summary)


# Words a complete clause does not end on (articles, prepositions, auxiliaries, possessives, conjunctions).
FUNCTION_WORDS = frozenset(
    "a an the to of in on at for with by from into onto about over under than as and or nor but if because while "
    "since though although whether that which who whom whose such my your his her its our their one's can could may "
    "might will would should must shall is are was were be been being am has have had do does did very every".split()
)
# Where a long sentence's first clause ends: punctuation, or right before a word that opens a new clause.
_CLAUSE_OPENERS = (
    "and but while whereas because since as which who so although though meaning thereby by promoting "
    "ensuring showing demonstrating allowing leading causing regardless rather even"
).split()
_BOUNDARY_RE = re.compile(r"\s*[,;:\u2014]\s+|\s+\u2014\s+|\s+(?=(?:" + "|".join(_CLAUSE_OPENERS) + r")\b)", re.I)


_DEPENDENT_OPENERS = frozenset(
    "if as when while by although though since because given in for to with without after before despite "
    "regardless instead unless whether once considering".split()
)


_SENTENCE_END_RE = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+", re.I)


def _complete(words: list[str]) -> bool:
    text = " ".join(words)
    return bool(words) and words[-1].lower().strip("\"'") not in FUNCTION_WORDS and text.count("(") == text.count(")")


def short_sentence(explanation: str, words: int) -> str:
    """A whole short sentence from an explanation, without final punctuation: its first sentence when that has at
    most ``words`` words, else its longest first clause (cut at a comma or before a clause-opening word such as
    "because" or "while") of at most ``words`` words that does not end on a function word; failing that the
    shortest such clause, failing that the whole first sentence."""
    first = _SENTENCE_END_RE.split(explanation.strip())[0].rstrip(".!?;:, ")
    if len(first.split()) <= words:
        return first
    # A sentence that opens with a dependent clause ("If the fly poses a risk, ...") has its main clause after
    # the first comma: no cut before that.
    lead = first.split()[0].lower().strip(",")
    start = first.find(",") + 1 if lead in _DEPENDENT_OPENERS and "," in first else 0
    clauses = [first[: m.start()].rstrip(".!?;:, ") for m in _BOUNDARY_RE.finditer(first) if m.start() > start]
    clauses = [c for c in clauses if len(c.split()) >= 4 and _complete(c.split())]
    fits = [c for c in clauses if len(c.split()) <= words]
    return max(fits, key=len) if fits else min(clauses, key=len) if clauses else first


def compact_target(perspectives: list[dict], words: int = 12, fits: Callable[[str], bool] | None = None) -> str | None:
    """cpu-profile target (documented deviation): the paper's two-block layout with one short whole sentence per
    perspective and a one-sentence summary naming every perspective — short enough for a 135M model to finish
    within its completion budget, and it keeps every name in the summary (the format score's echo rule). With
    ``fits`` (e.g. "at most N tokens"), the sentences get shorter until the target fits; None if it never does."""
    names = [p["name"].lower() for p in perspectives]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    for cap in range(words, 3, -1):
        lines = "\n".join(
            f"In the perspective of {p['name']}, {short_sentence(p['explanation'], cap)}." for p in perspectives
        )
        target = two_block(lines, f"This situation weighs {listed}.")
        if fits is None or fits(target):
            return target
    return None


def capitalise_sentences(text: str) -> str:
    """The authors capitalise each summary sentence (split on sentence punctuation + space)."""
    parts = re.split(r"([.!?]\s+)", text.strip())
    return "".join(p[:1].upper() + p[1:] if i % 2 == 0 else p for i, p in enumerate(parts))


def offline_summary(perspectives: list[dict]) -> str:
    """Offline fallback (no capable LLM): one sentence per comment, naming its perspective, joined into a
    paragraph — keeps the paper's "one summary sentence per comment" property, not its fluency."""
    sents = []
    for p in perspectives:
        first = re.split(r"(?<=[.!?])\s+", p["explanation"].strip())[0].rstrip(".!?")
        sents.append(f"From the perspective of {p['name'].lower()}, {first[:1].lower() + first[1:]}.")
    return " ".join(sents)


def summary_prompt(situation: str, perspectives: list[dict]) -> str:
    comments = "\n".join(
        f"{i + 1}. In the perspective of {p['name']}, {p['explanation']}" for i, p in enumerate(perspectives)
    )
    return f"{SUMMARY_INSTRUCTION}\n\n{SUMMARY_EXAMPLE}### Now your turn\n**Question:** {situation}\n**Comments:**\n{comments}\n**Summary:**"


def build_summaries(cfg: RunConfig, train: pd.DataFrame, cache: Path, device: str | None = None) -> dict[str, str]:
    """Summary per training situation: an LLM with the paper's sampling (batched, cached in a JSONL keyed by
    prompt, so reruns resume) or the documented offline fallback."""
    sc = cfg.train.summaries
    if sc.source == "offline":
        return {r["prompt"]: offline_summary(list(r["perspectives"])) for r in train.to_dict("records")}
    from tqdm.auto import tqdm

    from . import lm
    from .models import resolve

    done: dict[str, str] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["prompt"]] = rec["summary"]
            except (json.JSONDecodeError, KeyError):
                continue
    todo = [r for r in train.to_dict("records") if r["prompt"] not in done]
    if todo:
        model = lm.load(resolve(sc.model), device)
        with open(cache, "a") as fh:
            for start in tqdm(range(0, len(todo), sc.batch_size), desc="summaries"):
                batch = todo[start : start + sc.batch_size]
                prompts = [summary_prompt(r["prompt"], list(r["perspectives"])) for r in batch]
                seeds = [lm.row_seed(cfg.seed, r["prompt"]) for r in batch]
                outs = lm.sample(model, prompts, sc.max_new_tokens, sc.temperature, sc.top_p, None, seeds)
                for r, o in zip(batch, outs):
                    done[r["prompt"]] = capitalise_sentences(o.split("</think>")[-1].strip())
                    fh.write(json.dumps({"prompt": r["prompt"], "summary": done[r["prompt"]]}) + "\n")
                fh.flush()
    return done


def sft_targets(cfg: RunConfig, train: pd.DataFrame, summaries: dict[str, str], tok: Any = None) -> list[str | None]:
    """The SFT completion per training row: the paper's target, or the compact one (``train.targets``), which with
    the tokenizer ``tok`` is kept within GRPO's completion budget (``train.grpo.max_completion_length``); None for
    a situation whose compact target cannot fit (too many perspectives), which SFT leaves out."""
    recs = train.to_dict("records")
    if cfg.train.targets == "compact":
        budget = cfg.train.grpo.get("max_completion_length", 256)
        fits = (lambda t: len(tok(t, add_special_tokens=False)["input_ids"]) <= budget) if tok is not None else None
        return [compact_target(list(r["perspectives"]), cfg.train.compact_words, fits) for r in recs]
    return [sft_target(list(r["perspectives"]), summaries[r["prompt"]]) for r in recs]


def sft_dataset(train: pd.DataFrame, targets: list[str | None]):
    from datasets import Dataset

    rows = [
        {
            "prompt": [{"role": "user", "content": implicit(r["prompt"])}],
            "completion": [{"role": "assistant", "content": t}],
        }
        for r, t in zip(train.to_dict("records"), targets)
        if t is not None
    ]
    return Dataset.from_list(rows)
