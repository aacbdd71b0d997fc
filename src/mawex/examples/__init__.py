"""Example executors shipped with mawex, used by ``mawex demo`` and the tests (see ``demo``)."""

from __future__ import annotations
