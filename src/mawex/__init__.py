"""mawex: distributed task scheduling on the Master -> Worker -> Executor model."""

from __future__ import annotations

__version__ = "0.1.0"
