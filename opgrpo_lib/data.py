"""Step 01: OP-V2 data — hash-checked sources, perspective parsing, splits, data card."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import REPO_ROOT, SPLITS, AuthorsCfg, DataCfg, RunConfig
from .runs import atomic_write_bytes, atomic_write_parquet, atomic_write_text
from .text import MalformedReference, parse_perspectives

ENV_DATA_DIR = "OPGRPO_DATA_DIR"
ENV_CACHE_DIR = "OPGRPO_CACHE"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # path in the authors' repository
    git_sha1: str  # git blob sha1 (always known)
    sha256: str | None = None  # file sha256 where known
    base_url: str | None = None  # repository when not the OP-V2 data's (``data.base_url``)
    commit: str | None = None  # commit when not ``data.commit``


BENCH = "benchmark_new/dataset"
RELEASED_BASE_URL = "https://raw.githubusercontent.com/fuyu12345/Overton-Pluralistic-GRPO"
RELEASED_COMMIT = "f1561f5adeb94a24f76a495ae58dc9118c9f0974"
FILES: dict[str, RemoteFile] = {
    "final_test.csv": RemoteFile(
        f"{BENCH}/final_test.csv",
        "edf4babcfa83a335c8bbfdd58e93f716bc6abae2",
        "2a5da658f436dae02dbebc2a76854083e8244fdf4627189ac40128507cf64318",
    ),
    "test_5p.csv": RemoteFile(
        f"{BENCH}/test_5p.csv",
        "b6d07d74527d29b99ac2202c4c768034d56caf4a",
        "ed53a444be99f2fc97d3728796276b7f5adcbe7c7bd871385c6dd4bc715f91c5",
    ),
    "test_6p.csv": RemoteFile(
        f"{BENCH}/test_6p.csv",
        "d41a924c15a225b16adb46d3742866f50d55ca8e",
        "6b958290252dff13393eef13e8b81c10b0f7c739b4ac9e3ecac722a64fec4381",
    ),
    "test_7p.csv": RemoteFile(
        f"{BENCH}/test_7p.csv",
        "386260a243b8de000288acd324e373e16352eaba",
        "b9617e33aa5592afe73f97ca095a6404af1981425205ddd977a771fc1351f52b",
    ),
    "test_8p.csv": RemoteFile(
        f"{BENCH}/test_8p.csv",
        "897c41b7b79c48ae878d5115608eefc5034c827d",
        "fe34507557f82b7d95e39df030b57c3e851a2fc3bd08d47b147c0502e45a179e",
    ),
    "test_9p.csv": RemoteFile(
        f"{BENCH}/test_9p.csv",
        "00ce8128935bbbfcd2fbdf8eba67ce65bcc2a0df",
        "0fcf921ec53026f2c09c8c7a50868dcf1adc764f3acf0c2c6bf7ac40b9669492",
    ),
    "test_10p.csv": RemoteFile(
        f"{BENCH}/test_10p.csv",
        "21798b03f12e40092d334d66cb33415a5301c1e9",
        "4641682c54b8a6b8add20410aac099da8699ec6adcb0c35c2da14063418313fc",
    ),
    "test_gt10p.csv": RemoteFile(
        f"{BENCH}/test_gt10p.csv",
        "397efbef3e68029ed4fd84687b57f607b371319d",
        "d82d08c7e1686def787998abf2ddf85121d47c89f3979ee0884ce5d18bcff8cb",
    ),
    "final_train.csv": RemoteFile(f"{BENCH}/final_train.csv", "d778da747827b775b71a2c37c84356cde2bb6881"),
    "train_summary_sft_full_cleaned.csv": RemoteFile(
        f"{BENCH}/train_summary_sft_full_cleaned.csv", "fa8097ece27a5d875f110ca4f42659065bfecb36"
    ),
    # The authors' released OP-GRPO Qwen2.5-3B outputs on test_5p / test_10p (estimator mining, candidates =
    # released_outputs; read by estimator.load_released_outputs), from the paper's other public repository.
    "grpo_eval_summaries_clean.csv": RemoteFile(
        "benchmark_new/extract/grpo_eval_summaries_clean.csv",
        "ef267246e0b02f8eee7deeb315231be20df3f1e2",
        "fd4f0407c15d2edc9eef738e32b35f68a9ac1f47bda8bdc575f7f02dbdc56678",
        RELEASED_BASE_URL,
        RELEASED_COMMIT,
    ),
    "grpo_eval_summaries_clean_10p.csv": RemoteFile(
        "benchmark_new/extract/grpo_eval_summaries_clean_10p.csv",
        "c7cc013567e3b25ff48889aaec84546be66749b0",
        "311461f15eafdc52fef6aaba62bb8aa1adecd0b66696566dae15baf27073eedc",
        RELEASED_BASE_URL,
        RELEASED_COMMIT,
    ),
}


class DataIntegrityError(RuntimeError):
    """A data file does not match its pinned hash."""


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify_bytes(name: str, data: bytes, origin: str, spec: RemoteFile | None = None) -> None:
    spec = spec or FILES[name]
    if spec.sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != spec.sha256:
            raise DataIntegrityError(f"{name} from {origin}: sha256 {got} != pinned {spec.sha256}")
    got1 = git_blob_sha1(data)
    if got1 != spec.git_sha1:
        raise DataIntegrityError(f"{name} from {origin}: git blob sha1 {got1} != pinned {spec.git_sha1}")


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR, Path.home() / ".cache" / "opgrpo")) / "data"


def _repo_path(raw: str) -> Path:
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def local_dir(cfg: RunConfig) -> Path | None:
    raw = os.environ.get(ENV_DATA_DIR) or cfg.data.local_dir
    return _repo_path(raw) if raw else None


def download(
    name: str, base_url: str, commit: str, dest_dir: Path, timeout: float = 60.0, spec: RemoteFile | None = None
) -> Path:
    """Download one pinned file, verify its hash, write it atomically; nothing is left behind on failure.
    ``spec`` describes a file outside :data:`FILES` (the authors' evaluation logs)."""
    spec = spec or FILES[name]
    url = f"{(spec.base_url or base_url).rstrip('/')}/{spec.commit or commit}/{spec.path}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (pinned https URL or a test server)
        data = resp.read()
    verify_bytes(name, data, url, spec)
    dest = dest_dir / name
    atomic_write_bytes(dest, data)
    return dest


def fetch(name: str, cfg: RunConfig, dirs: Sequence[str | None] | None = None) -> Path:
    """Path of a verified copy of ``name``: the local directories first (default: ``data.local_dir`` or
    ``$OPGRPO_DATA_DIR``; relative to the repo root), then the cache, then a download at the pinned commit."""
    if name not in FILES:
        raise KeyError(f"unknown data file {name!r}; known: {sorted(FILES)}")
    folders = [local_dir(cfg)] if dirs is None else [_repo_path(d) for d in dirs if d]
    cached = cache_dir() / (FILES[name].commit or cfg.data.commit) / name
    hint = f"Set {ENV_DATA_DIR} to a folder holding the OP-V2 files or allow network access."
    local = [folder / name for folder in folders if folder is not None]
    return fetch_pinned(name, FILES[name], local, cached, "data", cfg.data, hint)[0]


def _read_verified(name: str, path: Path, spec: RemoteFile) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz" and not name.endswith(".gz"):  # a local copy kept compressed (the authors' logs)
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataIntegrityError(f"{path}: not a readable gzip file ({exc})") from exc
    verify_bytes(name, raw, str(path), spec)
    return raw


def fetch_pinned(
    name: str,
    spec: RemoteFile,
    local: Sequence[Path],
    cached: Path,
    section: str,
    source: DataCfg | AuthorsCfg,
    hint: str,
) -> tuple[Path, bytes]:
    """(path, verified bytes) of a pinned file: the ``local`` candidates in order (a ``.gz`` one holds the gzip of
    the bytes), then ``cached``, then a download into ``cached`` from ``source`` (the config section ``section``:
    ``download``, ``base_url``, ``commit``). A file that fails its hash raises :class:`DataIntegrityError` naming it
    and is never cached; ``hint`` says what to do when nothing is found."""
    tried = []
    for path in local:
        if path.exists():
            return path, _read_verified(name, path, spec)
        tried.append(str(path))
    if cached.exists():
        return cached, _read_verified(name, cached, spec)
    tried.append(str(cached))
    if not source.download:
        raise FileNotFoundError(f"{name} not found (tried {tried}) and {section}.download is false")
    try:
        path = download(cached.name, source.base_url, source.commit, cached.parent, spec=spec)
    except OSError as exc:
        raise FileNotFoundError(
            f"{name}: not found locally (tried {tried}) and the download failed ({exc}). {hint}"
        ) from exc
    return path, path.read_bytes()


@dataclass
class ParseReport:
    """Rows read and rows dropped (with reasons) while parsing one file."""

    source: str
    rows: int
    dropped: list[dict[str, Any]]
    count_mismatch: list[dict[str, Any]] = field(default_factory=list)  # parsed count outside the published split

    @property
    def kept(self) -> int:
        return self.rows - len(self.dropped)


def parse_frame(df: pd.DataFrame, source: str, on_error: str = "drop") -> tuple[pd.DataFrame, ParseReport]:
    """Add ``perspectives`` (list of {name, explanation}) and ``n_perspectives``; malformed rows are dropped and
    reported (``on_error="drop"``) or raise (``"raise"``)."""
    missing = {"prompt", "answer"} - set(df.columns)
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    rows, dropped = [], []
    for i, rec in enumerate(df.to_dict("records")):
        prompt = rec["prompt"]
        try:
            if not isinstance(prompt, str) or not prompt.strip():
                raise MalformedReference("empty prompt")
            persp = parse_perspectives(rec["answer"])
        except MalformedReference as exc:
            if on_error == "raise":
                raise MalformedReference(f"{source} row {i} ({str(prompt)[:60]!r}): {exc}") from exc
            dropped.append({"row": i, "prompt": prompt, "reason": str(exc)})
            continue
        rows.append(
            {
                "row_index": i,
                "prompt": prompt,
                "answer": rec["answer"],
                "perspectives": [{"name": n, "explanation": e} for n, e in persp],
                "n_perspectives": len(persp),
            }
        )
    out = pd.DataFrame(rows, columns=["row_index", "prompt", "answer", "perspectives", "n_perspectives"])
    return out, ParseReport(source, len(df), dropped)


def split_of(n: int) -> str:
    return f"{n}p" if n <= 10 else "gt10p"


def load_test_splits(cfg: RunConfig) -> tuple[pd.DataFrame, list[ParseReport]]:
    """All seven published test splits, in published row order, with a ``split`` column."""
    frames, reports = [], []
    for split in SPLITS:
        name = f"test_{split}.csv"
        df, rep = parse_frame(pd.read_csv(fetch(name, cfg), keep_default_na=False), name)
        # The published split wins; a row whose parsed count disagrees with its split is kept and reported.
        bad = df[df["n_perspectives"].map(split_of) != split]
        rep.count_mismatch = [{"prompt": r.prompt, "parsed": int(r.n_perspectives)} for r in bad.itertuples()]
        df.insert(0, "split", split)
        frames.append(df)
        reports.append(rep)
    return pd.concat(frames, ignore_index=True), reports


def carve(test: pd.DataFrame, cfg: RunConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Offline split: keep ``eval_per_split`` rows per split (``eval_split_rows`` per split where given; seeded
    choice, published order kept) for evaluation, train on the rest. Returns (train, eval). A larger count keeps
    every row a smaller one chose (the seeded permutation's first rows), so the evaluation carve only grows."""
    eval_parts, train_parts = [], []
    for i, split in enumerate(SPLITS):
        part = test[test["split"] == split]
        per = cfg.data.eval_split_rows.get(split, cfg.data.eval_per_split)
        if per is None or split in cfg.data.eval_keep_all or per >= len(part):
            eval_parts.append(part)
            continue
        chosen = part.sample(n=per, random_state=cfg.seed + i).index
        eval_parts.append(part.loc[sorted(chosen)])
        train_parts.append(part.drop(index=chosen))
    ev = pd.concat(eval_parts)
    tr = pd.concat(train_parts) if train_parts else test.iloc[0:0]
    if cfg.data.max_train_rows is not None:
        tr = tr.sample(n=min(cfg.data.max_train_rows, len(tr)), random_state=cfg.seed).sort_index()
    return tr.reset_index(drop=True), ev.reset_index(drop=True)


@dataclass
class PreparedData:
    train: pd.DataFrame
    eval: pd.DataFrame
    reports: list[ParseReport]
    card: dict[str, Any]
    val: pd.DataFrame | None = None  # held out of training to choose settings on (never the evaluation split)


def prepare(cfg: RunConfig) -> PreparedData:
    """Load, parse and split OP-V2 as the profile says."""
    test, reports = load_test_splits(cfg)
    if cfg.data.train_source == "carve":
        train, ev = carve(test, cfg)
    else:  # final_train (typed choice, checked at load)
        name = "final_train.csv"
        raw = pd.read_csv(fetch(name, cfg), keep_default_na=False).iloc[: cfg.data.grpo_rows]
        train, rep = parse_frame(raw, name)
        train.insert(0, "split", train["n_perspectives"].map(split_of))
        reports.append(rep)
        if cfg.data.max_train_rows is not None:
            train = train.iloc[: cfg.data.max_train_rows]
        _, ev = carve(test, cfg)
    val = train.iloc[0:0]
    if cfg.data.validation_situations:
        if cfg.data.validation_situations >= len(train):
            raise ValueError(
                f"data.validation_situations={cfg.data.validation_situations} >= {len(train)} training rows"
            )
        val = train.sample(n=cfg.data.validation_situations, random_state=cfg.seed + 101).sort_index()
        train, val = train.drop(index=val.index).reset_index(drop=True), val.reset_index(drop=True)
    for name, other in (("evaluation", ev), ("validation", val)):
        overlap = set(train["prompt"]) & set(other["prompt"])
        if overlap:
            raise AssertionError(
                f"{len(overlap)} {name} situations also occur in training, e.g. {sorted(overlap)[0]!r}"
            )
    if set(val["prompt"]) & set(ev["prompt"]):
        raise AssertionError("validation and evaluation situations overlap")
    return PreparedData(train, ev, reports, data_card(train, ev, reports, cfg, val), val)


def data_card(
    train: pd.DataFrame, ev: pd.DataFrame, reports: list[ParseReport], cfg: RunConfig, val: pd.DataFrame | None = None
) -> dict[str, Any]:
    def stats(df: pd.DataFrame) -> dict[str, Any]:
        words = df["answer"].str.split().str.len() if len(df) else pd.Series(dtype=float)
        return {
            "rows": int(len(df)),
            "rows_per_split": {s: int((df["split"] == s).sum()) for s in SPLITS},
            "perspectives_mean": round(float(df["n_perspectives"].mean()), 3) if len(df) else None,
            "perspectives_hist": {int(k): int(v) for k, v in df["n_perspectives"].value_counts().sort_index().items()},
            "words_per_answer_mean": round(float(words.mean()), 2) if len(df) else None,
        }

    return {
        "profile": cfg.profile,
        "train_source": cfg.data.train_source,
        "label": (
            "offline: training rows carved out of the published OP-V2 test set (disjoint from evaluation rows)"
            if cfg.data.train_source == "carve"
            else "paper: final_train.csv (first grpo_rows rows) + published test splits"
        ),
        "train": stats(train),
        "validation": stats(val if val is not None else train.iloc[0:0]),
        "eval": stats(ev),
        "parse": [
            {
                "source": r.source,
                "rows": r.rows,
                "kept": r.kept,
                "dropped": r.dropped,
                "count_mismatch": r.count_mismatch,
            }
            for r in reports
        ],
    }


def save(prepared: PreparedData, out_dir: Path) -> dict[str, Path]:
    """Write train/eval parquet, the data card (JSON + Markdown) and its plot under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.parquet", "eval": out_dir / "eval.parquet", "val": out_dir / "val.parquet"}
    for key, path in paths.items():
        frame = getattr(prepared, key)
        atomic_write_parquet(frame if frame is not None else prepared.train.iloc[0:0], path)
    paths["card"] = out_dir / "data_card.json"
    atomic_write_text(paths["card"], json.dumps(prepared.card, indent=2))
    paths["card_md"] = out_dir / "data_card.md"
    atomic_write_text(paths["card_md"], card_markdown(prepared.card))
    paths["plot"] = out_dir / "perspectives_per_row.png"
    plot_card(prepared, paths["plot"])
    return paths


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# OP-V2 data card ({card['profile']})",
        "",
        card["label"],
        "",
        "| split | train rows | eval rows |",
        "|---|---|---|",
    ]
    for s in SPLITS:
        lines.append(f"| {s} | {card['train']['rows_per_split'][s]} | {card['eval']['rows_per_split'][s]} |")
    lines.append(f"| all | {card['train']['rows']} | {card['eval']['rows']} |")
    lines += [
        "",
        f"Mean perspectives per row: train {card['train']['perspectives_mean']}, eval {card['eval']['perspectives_mean']}.",
    ]
    lines += [
        f"Mean words per answer: train {card['train']['words_per_answer_mean']}, eval {card['eval']['words_per_answer_mean']}.",
        "",
    ]
    for rep in card["parse"]:
        lines.append(f"- `{rep['source']}`: {rep['rows']} rows, {rep['kept']} parsed, {len(rep['dropped'])} dropped")
        for m in rep.get("count_mismatch", []):
            lines.append(f"  - kept in its published split although {m['parsed']} perspectives parse: {m['prompt']!r}")
    return "\n".join(lines) + "\n"


def plot_card(prepared: PreparedData, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for key, df in (("train", prepared.train), ("eval", prepared.eval)):
        counts = df["n_perspectives"].value_counts().sort_index()
        ax.bar(counts.index + (-0.2 if key == "train" else 0.2), counts.values, width=0.4, label=f"{key} ({len(df)})")
    ax.set_xlabel("reference perspectives per situation")
    ax.set_ylabel("situations")
    ax.set_title(f"OP-V2 ({prepared.card['profile']})")
    ax.legend()
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=120)
    plt.close(fig)
    shutil.move(tmp.name, path)


def load_prepared(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read back (train, eval) written by :func:`save`."""
    missing = [p for p in ("train.parquet", "eval.parquet") if not (data_dir / p).exists()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir}: {missing} missing; run step 01 (notebooks/01_data.ipynb or `opgrpo data`)"
        )
    return pd.read_parquet(data_dir / "train.parquet"), pd.read_parquet(data_dir / "eval.parquet")


def load_validation(data_dir: Path) -> pd.DataFrame:
    """The validation situations written by step 01 (empty when ``data.validation_situations`` is 0)."""
    path = Path(data_dir) / "val.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()
