"""OP-GRPO reproduction library."""

__version__ = "0.1.0"
