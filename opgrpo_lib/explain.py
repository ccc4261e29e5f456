"""Why a response scores what it scores: one OP-V2 situation, one response, every term of the OP reward.

Every number comes from the code that trains: :meth:`reward.OPRewardScorer.score_detailed` (layout check,
segmentation and keyword masking in ``prepare_response``; greedy matches, redundant pairs, ladders and the weighted
total in ``score_response``; the format parts in ``format_parts``). Nothing is recomputed here, so an explanation's
total is the batched scorer's total for the same inputs.

Plots use matplotlib's object API (no pyplot state; rendered with Agg when saved). The ipywidgets explorer is built
here so that the notebook stays thin; it is only offered where a Jupyter front end can show it (never under
papermill).
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import SPLITS, RewardCfg, RunConfig
from .estimator import RELEASED_FILES, released_path
from .models import agreement
from .reward import Encoder, OPRewardScorer, ResponseScore, SentenceEncoder, keyword_text_for, reward_terms
from .text import keywords, parse_perspectives, two_block

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

# The authors' released OP-GRPO Qwen2.5-3B outputs (summary format, 30 RL steps) on test_5p / test_10p, same row
# order as those files; located and hash-checked by the estimator's loader (``estimator.released_path``: the
# ``estimator.released_dir`` folder, $OPGRPO_DATA_DIR, the cache, then the pinned commit). $OPGRPO_RELEASED_DIR
# replaces the folder tried first.
ENV_RELEASED_DIR = "OPGRPO_RELEASED_DIR"
RELEASED_LABEL = "authors' released OP-GRPO 3B output"
_KEY_RE = re.compile(r"^(?P<split>" + "|".join(SPLITS) + r"):(?P<row>\d+)$")


# ---------------------------------------------------------------- situations and responses
@dataclass(frozen=True)
class Situation:
    """An OP-V2 situation and its reference answer (one "In the perspective of X, ..." line per perspective)."""

    prompt: str
    reference: str
    split: str | None = None  # test split, when it comes from OP-V2
    row: int | None = None  # row in test_<split>.csv

    @property
    def key(self) -> str | None:
        return f"{self.split}:{self.row}" if self.split is not None else None


def split_situations(cfg: RunConfig, split: str):
    """One published test split, parsed (``data.fetch``: local folder, cache or pinned download, hash-checked)."""
    import pandas as pd

    from . import data

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    name = f"test_{split}.csv"
    frame, _ = data.parse_frame(pd.read_csv(data.fetch(name, cfg), keep_default_na=False), name)
    return frame


def load_situation(cfg: RunConfig, key: int | str, reference: str | None = None) -> Situation:
    """``key``: "split:row" (row of test_<split>.csv, e.g. "5p:0"), an index into the seven test splits in order
    (5p rows first, gt10p last) or a situation's exact text. With ``reference`` the key is the situation text."""
    if reference is not None:
        parse_perspectives(reference)  # a malformed reference fails here, with the reason
        return Situation(str(key), reference)
    text = str(key).strip()
    m = _KEY_RE.match(text)
    if m:
        split, row = m["split"], int(m["row"])
        frame = split_situations(cfg, split)
        hit = frame[frame["row_index"] == row]
        if hit.empty:
            raise ValueError(f"situation {text!r}: test_{split}.csv has no parsed row {row} (rows 0-{len(frame) - 1})")
        return Situation(hit.iloc[0]["prompt"], hit.iloc[0]["answer"], split, row)
    frames = {s: split_situations(cfg, s) for s in SPLITS}
    if text.isdigit():
        i = int(text)
        for split, frame in frames.items():
            if i < len(frame):
                r = frame.iloc[i]
                return Situation(r["prompt"], r["answer"], split, int(r["row_index"]))
            i -= len(frame)
        raise ValueError(f"situation index {key} is past the end of the OP-V2 test set")
    for split, frame in frames.items():
        hit = frame[frame["prompt"].str.strip() == text]
        if not hit.empty:
            return Situation(hit.iloc[0]["prompt"], hit.iloc[0]["answer"], split, int(hit.iloc[0]["row_index"]))
    raise ValueError(
        f"situation {text[:80]!r} is not an OP-V2 test situation; give 'split:row', an index, or its reference too"
    )


def _released_path(cfg: RunConfig, split: str) -> Path:
    import dataclasses

    if os.environ.get(ENV_RELEASED_DIR):
        cfg = dataclasses.replace(
            cfg, estimator=dataclasses.replace(cfg.estimator, released_dir=os.environ[ENV_RELEASED_DIR])
        )
    return released_path(RELEASED_FILES[split], cfg)


def released_response(cfg: RunConfig, situation: Situation) -> str:
    """The authors' released OP-GRPO 3B output for an OP-V2 situation of test_5p or test_10p."""
    import pandas as pd

    if situation.split not in RELEASED_FILES:
        raise ValueError(
            f"released outputs exist for test_5p and test_10p only (situation {situation.key or situation.prompt!r})"
        )
    frame = pd.read_csv(_released_path(cfg, situation.split), keep_default_na=False)
    hit = frame[frame["prompt"] == situation.prompt]
    if hit.empty:
        raise ValueError(f"no released output for {situation.prompt[:60]!r}")
    return two_block(hit.iloc[0]["answer_p"], hit.iloc[0]["answers"])


def resolve_responses(cfg: RunConfig, situation: Situation, responses: Sequence[str] | str) -> list[tuple[str, str]]:
    """(label, text) per response. "released" = the released output for this situation; "released:<split>:<row>" =
    the released output for another situation (scored against this one's references); anything else is a text."""
    out = []
    for i, item in enumerate([responses] if isinstance(responses, str) else responses):
        if item == "released":
            out.append((RELEASED_LABEL, released_response(cfg, situation)))
        elif isinstance(item, str) and item.startswith("released:") and _KEY_RE.match(item[9:]):
            other = load_situation(cfg, item[9:])
            out.append((f"{RELEASED_LABEL} for {other.key} (another situation)", released_response(cfg, other)))
        else:
            out.append((f"response {chr(ord('A') + i) if i < 26 else i + 1}", item if isinstance(item, str) else ""))
    return out


_ENCODERS: dict[tuple[str, str | None], Encoder] = {}


def get_encoder(encoder: str | Encoder | None = None, device: str | None = "cpu") -> Encoder:
    """A sentence encoder by hub id, path or tiny:* name, loaded once per process (an Encoder is returned as is)."""
    if encoder is not None and not isinstance(encoder, str):
        return encoder
    key = (encoder or DEFAULT_ENCODER, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = SentenceEncoder(key[0], device=device)
    return _ENCODERS[key]


# ---------------------------------------------------------------- the explanation
@dataclass
class Explanation:
    """Every term of the OP reward for one (situation, response), as the batched scorer computed it."""

    label: str
    situation: str
    response: str  # as scored
    encoder: str
    prompt_style: str
    cfg: RewardCfg
    weights: tuple[float, float]  # (w_format, w_uniqueness)
    keywords: list[str]  # masking keywords (non-stopwords of the prompt text)
    reference_names: list[str]
    score: ResponseScore
    terms: dict[str, float] = field(default_factory=dict)  # weighted terms; total = max(0, their sum)

    @property
    def total(self) -> float:
        return self.score.parts.total

    @property
    def weight_values(self) -> dict[str, float]:
        """The weight of each ladder (uniqueness 0 when the ablation switches it off)."""
        w_u = self.weights[1] if self.cfg.use_uniqueness else 0.0
        return {"coverage": self.cfg.coverage_weight, "format": self.weights[0], "uniqueness": w_u}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (indices are 0-based; ``similarity`` rows = references, columns = segments)."""
        s, p, f = self.score, self.score.parts, self.score.response.format
        layout = s.response.layout
        return {
            "label": self.label,
            "situation": self.situation,
            "response": self.response,
            "encoder": self.encoder,
            "prompt_style": self.prompt_style,
            "references": [{"name": n, "text": t} for n, t in zip(self.reference_names, s.references)],
            "layout": {
                "valid": layout.valid,
                "scored": "core block" if layout.valid else "whole response",
                "summary": layout.summary,
            },
            "keywords": self.keywords,
            "segments": [{"text": t, "masked": m} for t, m in zip(s.response.segments, s.response.masked)],
            "similarity": s.similarity.tolist(),
            "coverage": {
                "threshold": self.cfg.coverage_threshold,
                "matches": [{"reference": r, "segment": c, "cosine": float(s.similarity[r, c])} for r, c in s.matches],
                "matched": p.matched,
                "n_references": p.n_references,
                "rate": p.coverage_rate,
                "ladder": p.coverage,
            },
            "uniqueness": {
                "threshold": self.cfg.uniqueness_threshold,
                "redundant_pairs": [
                    {"kept": i, "redundant": j, "cosine": float(s.self_similarity[i, j])} for i, j in s.redundant
                ],
                "n_redundant": len({j for _, j in s.redundant}),
                "n_segments": p.n_candidates,
                "rate": p.uniqueness_rate,
                "ladder": p.uniqueness,
                "used": self.cfg.use_uniqueness,
            },
            "format": {
                "perspective_ratio": f.perspective_ratio,
                "layout_points": f.layout_points,
                "duplicate_segments": f.duplicate_segments,
                "duplicate_names": f.duplicate_names,
                "repeat_penalty": f.repeat_penalty,
                "names": list(f.names),
                "missing_from_summary": list(f.missing_from_summary),
                "echo_penalty": f.echo_penalty,
                "score": f.score,
            },
            "tag": p.tag,
            "weights": self.weight_values,
            "terms": dict(self.terms),
            "total": p.total,
            "components": p.as_dict(),  # exactly what `opgrpo reward` writes per row
        }

    def to_text(self, max_items: int = 30) -> str:
        """A plain-text report (long lists are cut at ``max_items``)."""
        return render_text(self, max_items)


def explain_many(
    situation: Situation | str,
    responses: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    reference: str | None = None,
    encoder: str | Encoder | None = None,
    cfg: RunConfig | RewardCfg | None = None,
    prompt_style: str = "qwen2.5",
    device: str | None = "cpu",
    agree: Sequence[str] | None = None,
) -> list[Explanation]:
    """Explain several responses to one situation in one scorer call (one encode of every distinct sentence).

    ``prompt_style`` picks the masking text as ``opgrpo reward --prompt-style`` does (default: the authors' decoded
    Qwen2.5 chat prompt); ``agree``: the encoders of ``reward.agree_with`` (default: the profile's, resolved)."""
    if isinstance(situation, str):
        if reference is None:
            raise ValueError("a situation given as text needs its reference answer")
        situation = Situation(situation, reference)
    rcfg = cfg.reward if isinstance(cfg, RunConfig) else (cfg or RewardCfg())
    enc = get_encoder(encoder, device)
    if agree is None:
        agree = agreement(cfg) if isinstance(cfg, RunConfig) else list(rcfg.agree_with)
    scorer = OPRewardScorer(enc, rcfg, [get_encoder(name, device) for name in agree])
    kt = keyword_text_for(situation.prompt, prompt_style)
    n = len(responses)
    details = scorer.score_detailed([kt] * n, list(responses), [situation.reference] * n, [situation.prompt] * n)
    names = [name for name, _ in parse_perspectives(situation.reference)]
    kws = sorted(keywords(kt))
    enc_name = (
        encoder if isinstance(encoder, str) else (DEFAULT_ENCODER if encoder is None else type(encoder).__name__)
    )
    labels = list(labels) if labels is not None else [f"response {i + 1}" for i in range(n)]
    out = []
    for label, text, d in zip(labels, responses, details):
        p = d.parts
        terms = reward_terms(rcfg, scorer.weights, p.coverage, p.format, p.tag, p.uniqueness)
        text = text if isinstance(text, str) else ""
        out.append(
            Explanation(
                label, situation.prompt, text, enc_name, prompt_style, rcfg, scorer.weights, kws, names, d, terms
            )
        )
    return out


def explain_responses(cfg: RunConfig, situation: Situation, responses: Sequence[str] | str, **kwargs: Any):
    """:func:`explain_many` on :func:`resolve_responses` ("released" = the authors' released output)."""
    resolved = resolve_responses(cfg, situation, responses)
    labels = [label for label, _ in resolved]
    return explain_many(situation, [text for _, text in resolved], labels=labels, cfg=cfg, **kwargs)


def summary_table(explanations: Sequence[Explanation]):
    """One row per response: every component, as ``opgrpo reward`` writes it."""
    import pandas as pd

    return pd.DataFrame([e.score.parts.as_dict() for e in explanations], index=[e.label for e in explanations])


def explain(situation: Situation | str, response: str, **kwargs: Any) -> Explanation:
    """One response (see :func:`explain_many`)."""
    label = kwargs.pop("label", "response")
    return explain_many(situation, [response], labels=[label], **kwargs)[0]


# ---------------------------------------------------------------- text rendering
def _cut(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _matrix_lines(e: Explanation, max_cols: int) -> list[str]:
    s = e.score
    n_ref, n_c = s.similarity.shape
    matched = set(s.matches)
    cols = min(n_c, max_cols)
    lines = ["       " + "".join(f"{'S' + str(j + 1):>7}" for j in range(cols)) + (" …" if cols < n_c else "")]
    for i in range(n_ref):
        cells = "".join(f"{s.similarity[i, j]:6.2f}{'*' if (i, j) in matched else ' '}" for j in range(cols))
        lines.append(f"  R{i + 1:<4}" + cells)
    return lines


# The authors' uniqueness rate is 1 for fewer than two segments (nothing can repeat), so an empty response still
# earns w_u x 1 and, with the tag penalty, totals 0.3 - 0.2 = 0.1 under the default weights
FEW_SEGMENTS = " (fewer than two segments: rate 1, as in the authors' reward)"


def _empty_note(e: Explanation) -> list[str]:
    """Why an empty response scores above 0 (the authors' formula, not a bug of ours)."""
    if e.response.strip() or not e.cfg.use_uniqueness:
        return []
    u, tag = e.terms["uniqueness"], e.terms["tag"]
    return [
        f"empty response: total = max(0, uniqueness term {_fmt(u)} + tag term {_fmt(tag)}) = {_fmt(e.total)}, "
        "because the authors' reward counts no segments as fully unique"
    ]


def _options_line(cfg: RewardCfg) -> list[str]:
    """The named reward options in effect (none: the authors' reward)."""
    on = []
    if cfg.mask_references:
        on.append("references keyword-masked too (reward.mask_references)")
    if cfg.agree_with:
        under = ", ".join(cfg.agree_with)
        on.append(f"a match must also clear the threshold under {under} (reward.agree_with; smallest cosine shown)")
    return [f"reward options: {'; '.join(on)}"] if on else []


def render_text(e: Explanation, max_items: int = 30) -> str:
    s, p, f = e.score, e.score.parts, e.score.response.format
    layout, cfg = s.response.layout, e.cfg
    out = [
        f"== {e.label}",
        f"situation: {e.situation}",
        f"encoder: {e.encoder}; masking text: {e.prompt_style} "
        f"({len(e.keywords)} keywords, e.g. {', '.join(e.keywords[:8])})",
        *_options_line(cfg),
        "",
    ]
    if layout.valid:
        out.append("layout: valid <core perspectives> + <summary> blocks -> the core block is scored; tag term 0")
    else:
        out.append(f"layout: no strict two-block layout -> the whole response is scored; tag term {_fmt(p.tag)}")
    out += ["", f"reference perspectives ({len(s.references)}):"]
    out += [f"  R{i + 1:<3} {_cut(t)}" for i, t in enumerate(s.references[:max_items])]
    out += [f"  … {len(s.references) - max_items} more"] if len(s.references) > max_items else []
    out += ["", f"response segments ({p.n_candidates}), then as encoded (keywords masked):"]
    for j, (t, m) in enumerate(zip(s.response.segments[:max_items], s.response.masked[:max_items])):
        out += [f"  S{j + 1:<3} {_cut(t)}", f"       -> {_cut(m)}"]
    out += [f"  … {p.n_candidates - max_items} more"] if p.n_candidates > max_items else []
    if p.n_candidates:
        out += ["", f"similarity (cosine; * = greedy one-to-one match at >= {_fmt(cfg.coverage_threshold)}):"]
        out += _matrix_lines(e, min(max_items, 12))
    pairs = ", ".join(f"R{r + 1}<->S{c + 1} {s.similarity[r, c]:.2f}" for r, c in s.matches[:max_items])
    out += [
        "",
        f"coverage: {p.matched} of {p.n_references} references matched"
        + (f" ({pairs})" if pairs else "")
        + f" -> rate {p.coverage_rate:.2f} -> ladder {p.coverage}",
    ]
    red = ", ".join(f"S{j + 1} repeats S{i + 1} ({s.self_similarity[i, j]:.2f})" for i, j in s.redundant[:max_items])
    n_red = len({j for _, j in s.redundant})
    out.append(
        f"uniqueness: {n_red} of {p.n_candidates} segments redundant at >= {_fmt(cfg.uniqueness_threshold)}"
        + (f" ({red})" if red else "")
        + f" -> rate {p.uniqueness_rate:.2f} -> ladder {_fmt(p.uniqueness)}"
        + ("" if cfg.use_uniqueness else " (not used: reward.use_uniqueness is false)")
        + (FEW_SEGMENTS if cfg.use_uniqueness and p.n_candidates < 2 else "")
    )
    missing = ", ".join(f.missing_from_summary[:max_items]) or "none"
    out.append(
        f"format (core block, else the whole text): {len(f.names)}/{len(f.segments)} segments name a "
        f"perspective (ratio {f.perspective_ratio:.2f} -> {_fmt(f.layout_points)} points); repeats: "
        f"{f.duplicate_segments} segments + {f.duplicate_names} names ({_fmt(-f.repeat_penalty)}); names "
        f"missing from the summary (the whole text without a <summary> block): {missing} "
        f"({_fmt(f.echo_penalty)}) -> F = {_fmt(f.score)}"
    )
    w, t = e.weight_values, e.terms
    out.append(
        f"total = max(0, {_fmt(w['coverage'])}x{p.coverage} + {_fmt(w['format'])}x{_fmt(p.format)} "
        f"+ {_fmt(p.tag)} + {_fmt(w['uniqueness'])}x{_fmt(p.uniqueness)}) = max(0, {_fmt(t['coverage'])} "
        f"+ {_fmt(t['format'])} + {_fmt(t['tag'])} + {_fmt(t['uniqueness'])}) = {_fmt(p.total)}"
    )
    return "\n".join(out + _empty_note(e))


# ---------------------------------------------------------------- plots
TERM_ORDER = ("coverage", "format", "tag", "uniqueness")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_similarity(e: Explanation, ax: Any = None, max_segments: int = 40, vmin: float | None = None):
    """Heatmap of reference × segment cosines: matches boxed and annotated, cells at or above the coverage
    threshold outlined, the colour scale centred (white) on the threshold and marked on the colour bar."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, TwoSlopeNorm
    from matplotlib.patches import Rectangle

    s, thr = e.score, e.cfg.coverage_threshold
    sim = s.similarity[:, :max_segments]
    n_ref, n_c = sim.shape
    fig = ax.figure if ax is not None else _figure(max(4.0, 1.2 + 0.45 * n_c), max(2.5, 1.2 + 0.35 * n_ref))
    ax = ax if ax is not None else fig.add_subplot()
    lo = min(vmin if vmin is not None else 0.0, float(sim.min()) if sim.size else 0.0, thr - 0.05)
    norm = TwoSlopeNorm(vmin=lo, vcenter=thr, vmax=1.0)
    # pale blues below the threshold, a visible jump to reds at and above it
    below, above = colormaps["Blues_r"](np.linspace(0.3, 0.95, 128)), colormaps["Reds"](np.linspace(0.4, 0.95, 128))
    cmap = ListedColormap(np.vstack([below, above]))
    im = ax.imshow(sim if n_c else np.full((n_ref, 1), np.nan), cmap=cmap, norm=norm, aspect="auto")
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.ax.axhline(thr, color="black", lw=2)
    cbar.set_label(f"cosine (match threshold {thr:.2f})")
    for i, j in zip(*np.nonzero(sim >= thr)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ls="--", lw=0.8, ec="0.3"))
    for r, c in s.matches:
        if c < n_c:
            ax.add_patch(Rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, lw=2.2, ec="black"))
    if n_ref * max(n_c, 1) <= 300:
        for i in range(n_ref):
            for j in range(n_c):
                ax.text(
                    j,
                    i,
                    f"{sim[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    weight="bold" if (i, j) in s.matches else "normal",
                )
    ax.set_yticks(range(n_ref), [f"R{i + 1} {_cut(n, 22)}" for i, n in enumerate(e.reference_names)], fontsize=7)
    ax.set_xticks(range(n_c), [f"S{j + 1}" for j in range(n_c)], fontsize=7)
    more = f" (first {n_c} of {s.similarity.shape[1]} segments)" if s.similarity.shape[1] > n_c else ""
    empty = "" if n_c else " — no segment to score"
    ax.set_title(
        f"{_cut(e.label, 60)}: {s.parts.matched}/{s.parts.n_references} matched, "
        f"coverage ladder {s.parts.coverage}{more}{empty}",
        fontsize=9,
    )
    ax.set_xlabel("segments (box: match; dashed: >= threshold)", fontsize=8)
    return fig


def plot_terms(e: Explanation, ax: Any = None, xlim: tuple[float, float] = (-0.3, 2.1)):
    """Bar chart of the weighted reward terms and the total (fixed x range, so two responses compare)."""
    fig = ax.figure if ax is not None else _figure(5.0, 2.4)
    ax = ax if ax is not None else fig.add_subplot()
    p, w = e.score.parts, e.weight_values
    raw = {
        "coverage": f"{_fmt(w['coverage'])} x ladder {p.coverage}",
        "format": f"{_fmt(w['format'])} x F {_fmt(p.format)}",
        "tag": "layout ok" if p.valid_format else "no layout",
        "uniqueness": f"{_fmt(w['uniqueness'])} x ladder {_fmt(p.uniqueness)}",
    }
    names = [*TERM_ORDER, "total"]
    values = [e.terms[k] for k in TERM_ORDER] + [p.total]
    colors = ["tab:green" if v >= 0 else "tab:red" for v in values[:-1]] + ["black"]
    ax.barh(range(len(names)), values, color=colors)
    for k, (name, v) in enumerate(zip(names, values)):
        note = raw.get(name, "max(0, sum)")
        ax.text(max(v, 0) + 0.03, k, f"{v:.3g}  ({note})", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlim(*xlim)
    ax.set_title(f"weighted reward terms: total {p.total:.3g}", fontsize=9)
    return fig


def plot_explanation(e: Explanation, max_segments: int = 40):
    """Heatmap above the bar chart of the terms, for one response."""
    n_ref = len(e.score.references)
    n_c = min(e.score.similarity.shape[1], max_segments)
    fig = _figure(max(6.0, 2.5 + 0.45 * n_c), 3.0 + 0.35 * n_ref)
    top, bottom = fig.subfigures(2, 1, height_ratios=[max(2.0, 0.35 * n_ref + 1.2), 2.2])
    plot_similarity(e, top.add_subplot(), max_segments)
    plot_terms(e, bottom.add_subplot())
    return fig


def plot_comparison(explanations: Sequence[Explanation], max_segments: int = 25):
    """Side by side (one column per response): heatmaps on a common colour scale above the terms."""
    n_ref = len(explanations[0].score.references)
    widths = [max(4.5, 2.5 + 0.4 * min(e.score.similarity.shape[1], max_segments)) for e in explanations]
    fig = _figure(sum(widths) + 1.0, 3.2 + 0.35 * n_ref)
    vmin = min([float(e.score.similarity.min()) for e in explanations if e.score.similarity.size] + [0.0])
    cols = fig.subfigures(1, len(explanations), width_ratios=widths)
    for col, e in zip(np.atleast_1d(cols), explanations):
        top, bottom = col.subfigures(2, 1, height_ratios=[max(2.0, 0.35 * n_ref + 1.2), 2.2])
        plot_similarity(e, top.add_subplot(), max_segments, vmin=vmin)
        plot_terms(e, bottom.add_subplot())
    return fig


def figure(explanations: Explanation | Sequence[Explanation]):
    """:func:`plot_explanation` for one response, :func:`plot_comparison` for several."""
    exps = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    return plot_explanation(exps[0]) if len(exps) == 1 else plot_comparison(exps)


def figure_bytes(fig: Any, fmt: str = "png", dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path, dpi: int = 130) -> Path:
    """Write a figure atomically; the format follows the suffix (png, pdf, svg)."""
    from .runs import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, figure_bytes(fig, path.suffix.lstrip(".").lower() or "png", dpi))
    return path


def save(explanations: Sequence[Explanation], out_dir: str | Path, stem: str = "explanation") -> dict[str, Path]:
    """``<stem>.json`` (every explanation's ``to_dict``), ``<stem>.txt`` and ``<stem>.png`` under ``out_dir``."""
    from .runs import atomic_write_text

    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "text": out_dir / f"{stem}.txt", "figure": out_dir / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps([e.to_dict() for e in explanations], indent=1))
    atomic_write_text(paths["text"], "\n\n".join(e.to_text() for e in explanations) + "\n")
    save_figure(figure(explanations), paths["figure"])
    return paths


# ---------------------------------------------------------------- interactive explorer (ipywidgets)
def widgets_enabled(flag: bool | None = None) -> tuple[bool, str]:
    """(on, why). ``flag`` forces it; None = ipywidgets is importable and a Jupyter front end that renders widgets
    started this kernel (Colab, or a Jupyter server: JupyterLab, Notebook, Binder). Papermill kernels have none."""
    from importlib.util import find_spec

    if find_spec("ipywidgets") is None:
        return False, "ipywidgets is not installed (pip install '.[notebooks]')"
    if flag is not None:
        return bool(flag), "forced by the interactive parameter"
    if "google.colab" in sys.modules:
        return True, "Colab"
    if os.environ.get("JPY_SESSION_NAME"):
        return True, "Jupyter server front end"
    return False, "no Jupyter front end (papermill or a plain kernel)"


def explorer(
    cfg: RunConfig,
    situation: Situation | None = None,
    responses: Sequence[str] = (),
    *,
    encoder: str | Encoder | None = None,
    prompt_style: str = "qwen2.5",
    enabled: bool | None = None,
):
    """The interactive explorer when :func:`widgets_enabled` says so, else None (and a line saying why)."""
    on, why = widgets_enabled(enabled)
    if not on:
        print(f"interactive explorer off: {why}; the static explanation above is complete")
        return None
    return build_explorer(cfg, situation, responses, encoder=encoder, prompt_style=prompt_style)


class _Explorer:
    """The explorer's widgets, its state and the callbacks that keep them consistent."""

    def __init__(self, w: Any, cfg: RunConfig, situation: Situation, responses: list[str], **explain_kw: Any):
        self.cfg, self.explain_kw = cfg, explain_kw  # encoder and prompt_style for explain_many
        self.frames: dict[str, Any] = {}  # parsed test splits, loaded on first use
        fit = {"description_width": "initial"}  # labels are never cut off
        big = w.Layout(width="100%", height="11em")
        self.split = w.Dropdown(
            options=list(SPLITS),
            value=situation.split or "5p",
            description="split",
            style=fit,
            layout=w.Layout(width="9em"),
        )
        self.row = w.BoundedIntText(
            value=situation.row or 0, min=0, max=10_000, description="row", style=fit, layout=w.Layout(width="9em")
        )
        self.text_a = w.Textarea(
            value=responses[0] if len(responses) > 0 else "", description="response A", layout=big, style=fit
        )
        self.text_b = w.Textarea(
            value=responses[1] if len(responses) > 1 else "",
            description="response B",
            layout=big,
            style=fit,
            placeholder="optional: a second response to compare, for the situation shown above",
        )
        self.load = w.Button(description="released output → A", tooltip=RELEASED_LABEL, layout=w.Layout(width="auto"))
        self.run = w.Button(description="Explain", button_style="primary", layout=w.Layout(width="auto"))
        self.header, self.status, self.report, self.note = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.image = w.Image(format="png")
        # b_default: B's text while the user has not edited it; it belongs to one situation and is dropped on a change
        self.state = {"situation": situation, "b_default": self.text_b.value, "busy": False}

    def parts(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "row": self.row,
            "a": self.text_a,
            "b": self.text_b,
            "load": self.load,
            "run": self.run,
            "status": self.status,
            "report": self.report,
            "image": self.image,
            "state": self.state,
            "note": self.note,
        }

    def show_situation(self) -> None:
        sit = self.state["situation"]
        where = f" ({sit.key})" if sit.key else ""
        self.header.value = f"<b>situation{where}:</b> {html.escape(sit.prompt)}"
        self.load.disabled = sit.split not in RELEASED_FILES

    def refresh(self, *_: Any) -> None:
        texts = [self.text_a.value] + ([self.text_b.value] if self.text_b.value.strip() else [])
        self.state["busy"], self.run.disabled, self.run.description = True, True, "Explaining…"
        self.status.value = "<i>⏳ computing the explanation…</i>"
        try:
            exps = explain_many(
                self.state["situation"], texts, labels=["A", "B"][: len(texts)], cfg=self.cfg, **self.explain_kw
            )
            png = figure_bytes(figure(exps))
        except Exception as exc:  # shown in the widget, not raised into the event loop
            self.status.value = f"<span style='color:#b00'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"
            return
        finally:
            self.state["busy"], self.run.disabled, self.run.description = False, False, "Explain"
        # everything is computed first, then shown together: the total never disagrees with the figure
        self.image.value = png
        self.report.value = "<pre>" + html.escape("\n\n".join(e.to_text() for e in exps)) + "</pre>"
        self.status.value = " | ".join(f"{e.label}: total <b>{e.total:.3g}</b>" for e in exps)

    def use_released(self, *_: Any) -> None:
        try:
            self.text_a.value = released_response(self.cfg, self.state["situation"])
        except (ValueError, FileNotFoundError) as exc:
            self.status.value = html.escape(str(exc))
            return
        self.refresh()

    def revert(self, frame: Any) -> None:
        """Put the controls back on the situation still shown, and say why (the picked row does not exist)."""
        bad, bad_split, cur = self.row.value, self.split.value, self.state["situation"]
        self.state["reverting"] = True
        try:
            self.split.value, self.row.value = cur.split or self.split.value, cur.row if cur.row is not None else 0
        finally:
            self.state["reverting"] = False
        rows = frame["row_index"]
        self.note.value = (
            f"<span style='color:#b00'>test_{bad_split}.csv "
            f"has no parsed row {bad} (rows {int(rows.min())}-{int(rows.max())}); still showing "
            f"{html.escape(str(cur.key))}</span>"
        )

    def pick(self, *_: Any) -> None:
        if self.state.get("reverting"):
            return
        if self.split.value not in self.frames:
            self.frames[self.split.value] = split_situations(self.cfg, self.split.value)
        frame = self.frames[self.split.value]
        hit = frame[frame["row_index"] == self.row.value]
        if hit.empty:
            self.revert(frame)
            return
        self.note.value = ""
        r = hit.iloc[0]
        self.state["situation"] = Situation(r["prompt"], r["answer"], self.split.value, int(r["row_index"]))
        self.show_situation()
        if (
            self.text_b.value == self.state["b_default"] and self.text_b.value
        ):  # B was written for the previous situation
            self.text_b.value = self.state["b_default"] = ""
            self.note.value = "response B cleared: its text answered the previous situation"
        if self.split.value in RELEASED_FILES:
            self.use_released()
        else:
            self.refresh()


def build_explorer(
    cfg: RunConfig,
    situation: Situation | None = None,
    responses: Sequence[str] = (),
    *,
    encoder: str | Encoder | None = None,
    prompt_style: str = "qwen2.5",
):
    """Pick an OP-V2 test situation (split + row), edit up to two responses, see the explanation update
    (``responses`` as in :func:`resolve_responses`).

    Returns the widget box; ``box.explorer`` holds the parts (for tests and scripting)."""
    import ipywidgets as w

    situation = situation or load_situation(cfg, "5p:0")
    responses = [text for _, text in resolve_responses(cfg, situation, responses)]
    ex = _Explorer(w, cfg, situation, responses, encoder=encoder, prompt_style=prompt_style)
    ex.split.observe(ex.pick, "value")
    ex.row.observe(ex.pick, "value")
    ex.load.on_click(ex.use_released)
    ex.run.on_click(ex.refresh)
    ex.show_situation()
    if not ex.text_a.value and situation.split in RELEASED_FILES:
        ex.use_released()
    else:
        ex.refresh()
    controls = w.HBox([ex.split, ex.row, ex.load, ex.run])
    box = w.VBox([controls, ex.note, ex.header, ex.text_a, ex.text_b, ex.status, ex.image, ex.report])
    box.explorer = ex.parts()
    return box
