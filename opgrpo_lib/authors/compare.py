"""``opgrpo compare``: a user's outputs scored on the OP-V2 situations they cover, beside every authors' system
logged on those situations (re-scored under each evaluator with the same protocol), with paired bootstrap CIs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..config import REPO_ROOT, RunConfig  # noqa: E402
from ..paths import atomic_write_text  # noqa: E402
from ..plots import LOGGED_AS, save_figure, styled, system_color  # noqa: E402
from .claims import paired_claims  # noqa: E402
from .evidence import load_evidence  # noqa: E402
from .rescore import Item, evaluator_name, job_items, rescore_jobs, rescore_sbert  # noqa: E402

NO_COUNTERPART = "#999999"  # an authors' system with no system of ours behind it (as in figures_authors)


class CompareInputError(ValueError):
    """A ``compare`` input that cannot be scored (one line, naming the file)."""


def read_user_outputs(path: Path, column: str, test: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The user's outputs joined to OP-V2 by prompt; duplicates, empty outputs and unknown prompts are excluded and
    counted. Raises :class:`CompareInputError` when nothing is left."""
    path = Path(path)
    if not path.is_file():
        raise CompareInputError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CompareInputError(f"{path}: not a readable CSV ({type(exc).__name__})") from exc
    for col in ("prompt", column):
        if col not in df.columns:
            raise CompareInputError(f"{path}: column {col!r} not found; columns are {list(df.columns)}")
    counts = {"rows": len(df)}
    dup = df["prompt"].duplicated(keep=False)
    counts["duplicate_prompt_rows"] = int(dup.sum())
    df = df[~dup]
    empty = df[column].map(lambda t: not isinstance(t, str) or not t.strip()).astype(bool)
    counts["empty_outputs"] = int(empty.sum())
    df = df[~empty]
    where = test.drop_duplicates("prompt")[["prompt", "split", "row_index", "answer"]]
    joined = df[["prompt", column]].merge(where, on="prompt", how="inner")
    counts["not_opv2_prompts"] = int(len(df) - len(joined))
    counts["matched_situations"] = int(len(joined))
    if joined.empty:
        raise CompareInputError(_nothing_left(path, column, counts))
    return joined.rename(columns={column: "output", "row_index": "opv2_row"}), counts


def _nothing_left(path: Path, column: str, counts: dict[str, int]) -> str:
    """Why no row of the user's file can be scored, by the first exclusion that removed them all."""
    rows, dup, empty = counts["rows"], counts["duplicate_prompt_rows"], counts["empty_outputs"]
    if rows == 0:
        return f"{path}: no rows"
    if dup == rows:
        return (
            f"{path}: each of its {rows} rows repeats the prompt of another row (a prompt given more than once "
            "is excluded: which of its outputs to score is ambiguous)"
        )
    if empty == rows - dup:
        more = f"; the other {dup} repeat a prompt" if dup else ""
        return f"{path}: column {column!r} is empty in each of its {rows - dup} rows with a unique prompt{more}"
    return (
        f"{path}: none of its {rows} rows has a prompt that is an OP-V2 test situation (after excluding "
        f"duplicates and empty outputs: {counts})"
    )


def profile_systems(profile: str) -> dict[str, pd.DataFrame]:
    """The committed outputs of one profile's own systems (``results/<profile>/generations/*.jsonl``): scored text
    = the core block when the layout is valid, else the whole text."""
    out = {}
    for path in sorted((REPO_ROOT / "results" / profile / "generations").glob("*.jsonl")):
        df = pd.read_json(path, lines=True)
        if df.empty or "prompt" not in df:
            continue
        if "prompt_style" in df:
            df = df[df["prompt_style"].fillna("default") == "default"]
        valid = df.get("valid_format", [False] * len(df))
        text = [
            c if isinstance(c, str) and c.strip() and v else t
            for c, t, v in zip(df.get("core", df["text"]), df["text"], valid)
        ]
        out[f"ours ({profile}): {path.stem}"] = pd.DataFrame({"prompt": df["prompt"], "output": text})
    return out


def load_evaluators(cfg: RunConfig, evaluators: Sequence[str]) -> dict[str, Any]:
    """Each evaluator loaded (before any log is read): one that cannot be loaded is a one-line error naming it."""
    from ..device import resolve_device
    from ..reward import SentenceEncoder

    device = resolve_device(cfg)
    out = {}
    for name in evaluators:
        try:
            out[name] = SentenceEncoder(name, device=device)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            why = (text.strip().splitlines() or [type(exc).__name__])[0]
            raise CompareInputError(f"--evaluator {name}: cannot be loaded here ({why})") from exc
    return out


def _situations(
    cfg: RunConfig,
    test: pd.DataFrame,
    user: pd.DataFrame,
    label: str,
    systems: Sequence[str],
    with_profile: str | None,
) -> tuple[list[Item], list[str]]:
    """(items to score: the user's, our profile's systems' and the authors' on the user's situations, the authors'
    systems among them)."""
    from ..text import eval_candidate_sentences, eval_reference_sentences

    keys = [(s, int(r)) for s, r in zip(user["split"], user["opv2_row"])]
    refs = {k: eval_reference_sentences(a) for k, a in zip(keys, user["answer"])}
    own = [(label, s, r, refs[(s, r)], eval_candidate_sentences(o)) for (s, r), o in zip(keys, user["output"])]
    own = [it for it in own if it[4]]
    extra = []
    if with_profile:
        where = dict(zip(user["prompt"], keys))
        for sys_name, df in profile_systems(with_profile).items():
            for p, o in zip(df["prompt"], df["output"]):
                if p in where and isinstance(o, str) and o.strip():
                    s, r = where[p]
                    extra.append((sys_name, s, r, refs[(s, r)], eval_candidate_sentences(o)))
    ev = load_evidence(cfg, test)
    jobs = rescore_jobs(ev, list(systems), sorted({s for s, _ in keys}))
    matched = set(keys)
    items = [it for it in job_items(ev, jobs) if (it[1], it[2]) in matched]
    return own + extra + items, sorted({j.system for j in jobs})


def compare(
    cfg: RunConfig,
    candidates: Path,
    column: str,
    evaluators: Sequence[str],
    out_dir: Path,
    name: str | None = None,
    systems: Sequence[str] = ("all",),
    with_profile: str | None = None,
    reps: int = 2000,
) -> dict[str, Any]:
    """Score a user's outputs on the OP-V2 situations they cover beside every authors' system logged on those
    situations (re-scored under each evaluator with the same protocol), with paired bootstrap CIs against each.
    Every input is checked (the file, then the evaluators) before the logs are read; ``out_dir`` is created only
    when there is something to write."""
    from ..data import load_test_splits

    test, _ = load_test_splits(cfg)
    user, counts = read_user_outputs(Path(candidates), column, test)
    label = name or column
    encoders = load_evaluators(cfg, evaluators)
    items, authors_systems = _situations(cfg, test, user, label, systems, with_profile)
    tables = []
    for ev_name, encoder in encoders.items():
        per = rescore_sbert(items, encoder, cfg.authors.rescore_threshold, evaluator_name(ev_name))
        others = sorted(set(per.system) - {label})
        res = paired_claims(per, [(label, o) for o in others], reps, cfg.seed)
        pooled = res[res.split == "all common"].set_index(["a", "b"]).index
        tables.append(res[(res.split == "all common") | ~res.set_index(["a", "b"]).index.isin(pooled)])
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    summary = {
        "candidates": str(candidates),
        "column": column,
        "name": label,
        **counts,
        "authors_systems": authors_systems,
        "evaluators": list(evaluators),
        "threshold": cfg.authors.rescore_threshold,
    }
    files = _write(Path(out_dir), table, summary)
    return {**summary, "files": [str(f) for f in files], "table": table}


def _write(out_dir: Path, table: pd.DataFrame, summary: dict[str, Any]) -> list[Path]:
    """compare.csv, its figure and compare_summary.json (which lists the files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "compare"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    files = [stem.with_suffix(".csv")]
    if not table.empty:
        fig = fig_compare(table, summary["name"], summary["matched_situations"])
        files += save_figure(fig, out_dir / "compare_figure")
    text = json.dumps({**summary, "files": [str(f) for f in files]}, indent=2)
    atomic_write_text(out_dir / "compare_summary.json", text)
    return files


def _color(system: str) -> str:
    """Our system's fixed colour; an authors' system in the colour of our counterpart, else grey."""
    if system.startswith("ours ("):
        return system_color(system.split(": ", 1)[-1])
    return system_color(LOGGED_AS[system]) if system in LOGGED_AS else NO_COUNTERPART


@styled
def fig_compare(table: pd.DataFrame, label: str, matched: int) -> plt.Figure:
    """Each system's score on the situations it shares with the user's outputs (bars: the authors' hatched, in
    the colour of our counterpart; ours solid) and the user's score on the same situations (black diamonds), one
    panel per evaluator; the paired difference with its 95 % CI under each system's name."""
    evs = list(dict.fromkeys(table["evaluator"]))
    rows = int(table.groupby("evaluator").size().max())
    fig, axes = plt.subplots(
        1, len(evs), figsize=(4.5 + 4.5 * len(evs), 1.8 + 0.5 * rows), squeeze=False, layout="constrained"
    )
    for ax, e in zip(axes[0], evs):
        t = table[table.evaluator == e].sort_values("score_b", ascending=False, kind="stable")
        y = list(range(len(t)))
        for yi, b, score in zip(y, t.b, t.score_b):
            ours = str(b).startswith("ours (")
            ax.barh(yi, score, color=_color(str(b)), height=0.7, hatch=None if ours else "//", alpha=0.85)
        ax.scatter(t.score_a, y, color="black", marker="D", s=30, zorder=3)
        ticks = [
            f"{b}\nn = {n}; {label} − this system: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            for b, n, d, lo, hi in zip(t.b, t.n, t["diff"], t.ci_low, t.ci_high)
        ]
        ax.set_yticks(y, ticks)
        ax.set_ylim(len(t) - 0.5, -0.5)
        ax.set_xlim(0, 1.04)  # a score of 1 keeps its whole marker
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"relative accuracy ({e} @ {float(t.threshold.iloc[0]):.2f})")
    _legend(fig, label, any(str(b).startswith("ours (") for b in table.b))
    fig.suptitle(f"{label} beside each system on the OP-V2 situations both were scored on ({matched} matched)")
    return fig


def _legend(fig: plt.Figure, label: str, ours: bool) -> None:
    """A legend under the figure (never over the data)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], color="black", marker="D", linestyle="none"),
        Patch(facecolor="white", edgecolor="#444444", hatch="//"),
    ]
    texts = [
        f"{label}, on the situations it shares with that system",
        "an authors' system (logged outputs, re-scored): coloured as our counterpart, grey when none",
    ]
    if ours:
        handles.append(Patch(facecolor="#444444"))
        texts.append("a system of ours (results/<profile>/generations)")
    fig.legend(handles, texts, loc="outside lower center", ncol=1)
