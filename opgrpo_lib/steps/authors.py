"""Step 08 (placeholder until the authors split lands)."""

from ..authors import run  # noqa: F401
