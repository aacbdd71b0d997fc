"""Clients of a mawex cluster: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the master's HTTP API, follow the leader across failovers and share one
IO-free implementation (:mod:`mawex.client._base`); only their IO loops differ.
"""

from __future__ import annotations

from mawex.client._base import BatchReceipt, SubmitReceipt
from mawex.client.async_ import AsyncClient
from mawex.client.sync import Client

__all__ = ["AsyncClient", "BatchReceipt", "Client", "SubmitReceipt"]
