"""Where things live: the repository, profiles, offline models, run folders and their results.

A run folder (``runs/<profile>`` unless ``--run-dir`` / ``$OPGRPO_RUN_DIR`` says otherwise) holds every output of
one run, its results included (``<run>/results``, ``<run>/figures``). The committed ``results/<profile>`` and
``figures/<profile>`` change only through ``opgrpo publish``, so a user's rerun never dirties the clone.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
ENV_MODELS_DIR = "OPGRPO_MODELS_DIR"
ENV_RUN_DIR = "OPGRPO_RUN_DIR"  # a folder under which runs/<profile> is replaced by $OPGRPO_RUN_DIR/<profile>


def models_dir() -> Path:
    return Path(os.environ.get(ENV_MODELS_DIR, REPO_ROOT / "models"))


def default_run_dir(profile: str) -> Path:
    base = os.environ.get(ENV_RUN_DIR)
    return (Path(base) / profile) if base else REPO_ROOT / "runs" / profile


def committed_results(profile: str) -> Path:
    """The results folder under version control (written by ``opgrpo publish`` only)."""
    return REPO_ROOT / "results" / profile


def committed_figures(profile: str) -> Path:
    return REPO_ROOT / "figures" / profile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success it is renamed into place with the usual file mode
    (``mkstemp`` creates 0600 files), on failure removed: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
