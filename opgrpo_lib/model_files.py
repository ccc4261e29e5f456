"""Built model folders: their file manifest (hash, size, mtime), checked on every load (``models``, ``tiny``)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


class ModelUnavailable(RuntimeError):
    """A model is needed that cannot be obtained on this machine."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MANIFEST = ".opgrpo_manifest.json"  # {file: {sha256, size, mtime_ns}} of a built folder, checked on every load


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".opgrpo_"))


def write_manifest(folder: Path) -> dict:
    """Record every file of a built folder (hash, size, mtime) so a later change to it is noticed on load."""
    entries = {}
    for f in _folder_files(folder):
        st = f.stat()
        entries[str(f.relative_to(folder))] = {
            "sha256": sha256_file(f),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{MANIFEST}.", suffix=".tmp")
    with open(fd, "w") as fh:
        fh.write(json.dumps(entries, indent=1, sort_keys=True))
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / MANIFEST)
    return entries


def verify_folder(folder: Path, hub_id: str) -> None:
    """Refuse a built folder whose files changed since they were built: size and mtime are compared first (cheap),
    a file that differs in either is re-hashed. A folder built before manifests existed gets one now."""
    path = folder / MANIFEST
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        try:
            write_manifest(folder)
        except OSError:
            pass  # a read-only shared folder: nothing to compare against
        return
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(
            f"{path}: unreadable manifest ({exc}); rebuild: opgrpo models build --force {hub_id}"
        ) from None
    for rel, want in entries.items():
        f = folder / rel
        try:
            st = f.stat()
        except OSError:
            raise ModelUnavailable(
                f"{f}: missing from the built {hub_id} folder; rebuild: opgrpo models build --force {hub_id}"
            ) from None
        if st.st_size == want["size"] and st.st_mtime_ns == want["mtime_ns"]:
            continue
        got = sha256_file(f)
        if got != want["sha256"]:
            raise ModelUnavailable(
                f"{f}: changed since it was built (sha256 {got[:16]}... != {want['sha256'][:16]}...); rebuild: "
                f"opgrpo models build --force {hub_id}"
            )
