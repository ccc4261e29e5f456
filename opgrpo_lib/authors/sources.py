"""The pinned authors' files (logs manifest) and where their verified bytes come from: a local folder, the cache,
or a download from the pinned commit (``data.fetch_pinned``)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import REPO_ROOT, RunConfig
from ..data import RemoteFile, cache_dir, fetch_pinned

ENV_AUTHORS_LOGS = "OPGRPO_AUTHORS_LOGS"
UPSTREAM_DIR = "benchmark_new/summary_eval"
MANIFEST_PATH = Path(__file__).resolve().parents[1] / "resources" / "authors_eval_logs_manifest.tsv"


@dataclass(frozen=True)
class ManifestEntry:
    upstream_path: str  # relative to benchmark_new/summary_eval/
    stored_as: str  # file name in the local folder (``.gz`` = gzip of the upstream bytes)
    git_sha1: str
    sha256: str
    size: int

    @property
    def is_log(self) -> bool:
        return self.upstream_path.endswith(".log")

    @property
    def remote(self) -> RemoteFile:
        return RemoteFile(f"{UPSTREAM_DIR}/{self.upstream_path}", self.git_sha1, self.sha256)


def manifest(path: Path = MANIFEST_PATH) -> list[ManifestEntry]:
    """The pinned files (upstream path, git blob sha1, sha256, size), in manifest order."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [
        ManifestEntry(r["upstream_path"], r["stored_as"], r["git_blob_sha1"], r["sha256"], int(r["bytes"]))
        for r in rows
    ]


def local_dir(cfg: RunConfig) -> Path | None:
    raw = os.environ.get(ENV_AUTHORS_LOGS) or cfg.authors.local_dir
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def read_source(entry: ManifestEntry, cfg: RunConfig) -> bytes:
    """The verified upstream bytes of one file: local folder, then the cache, then a download from the pinned
    commit. A file that fails its hash raises :class:`data.DataIntegrityError` naming it; nothing of it is cached."""
    name = entry.upstream_path
    ldir = local_dir(cfg)
    local = [ldir / Path(name).parent / entry.stored_as] if ldir is not None else []
    cached = cache_dir() / "authors-eval-logs" / cfg.authors.commit / name
    hint = f"Set {ENV_AUTHORS_LOGS} to a folder holding the authors' evaluation logs or allow network access."
    return fetch_pinned(name, entry.remote, local, cached, "authors", cfg.authors, hint)[1]
