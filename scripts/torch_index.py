"""Print the pip option that makes torch resolve to its CPU build: ``--extra-index-url URL`` when PyTorch's CPU wheel
index answers within a few seconds, else nothing (and a note on stderr).

PyPI's Linux ``torch`` wheel is the CUDA build (+ ~17 nvidia wheels, several GB); the CPU index holds ``+cpu``
builds, which pip prefers for ``torch==X`` because a local version label sorts after the bare version. The probe
exists because pip retries an unreachable index five times for every package it looks up: without the index the
install falls back to whatever pip is configured with (here a local ``+cpu`` wheel) instead of hanging for minutes.

Usage (the Makefile's install line): ``pip install $(python scripts/torch_index.py [URL]) torch==2.13.0 ...``.
``URL`` = "" or "none" turns the index off.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT = "https://download.pytorch.org/whl/cpu"
TIMEOUT_S = 5.0


def reachable(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(answers, why): a GET of the index's torch page within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))


def main(argv: list[str]) -> int:
    url = argv[0] if argv else DEFAULT
    if url.strip().lower() in ("", "none"):
        print("torch index: off (TORCH_INDEX is empty); torch comes from pip's configured indexes", file=sys.stderr)
        return 0
    ok, why = reachable(url)
    if ok:
        print(f"--extra-index-url {url}")
        return 0
    print(
        f"torch index: {url} unreachable ({why}); installing from pip's configured indexes only - "
        "on a machine without a local +cpu wheel that is PyPI's CUDA build (pass TORCH_INDEX=... to fix)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
