"""A debounced stream of :class:`MeshStatus`, driven by :meth:`FabricAPI.subscribe`.

The first status is yielded at once; after that, a change starts a window of
``debounce_s`` in which further changes are absorbed, then one new status is built and
yielded if it differs from the last one. With no change for ``refresh_s`` the status is
rebuilt anyway (member states such as ``suspect`` are not key changes). The feed ends
when the fabric stops or :meth:`aclose` is called.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from reconciler.fabric.api import Change, FabricAPI

from .snapshot import snapshot_of
from .status import MeshStatus, build_status


class StatusFeed:
    def __init__(
        self, fabric: FabricAPI, *, debounce_s: float = 0.2, refresh_s: float = 5.0
    ) -> None:
        self._fabric = fabric
        self._debounce = debounce_s
        self._refresh = refresh_s
        self._sub: AsyncIterator[Change] = fabric.subscribe("")
        self._last: dict[str, Any] | None = None
        self._closed = False

    def status(self) -> MeshStatus:
        return build_status(snapshot_of(self._fabric))

    def __aiter__(self) -> StatusFeed:
        return self

    async def __anext__(self) -> MeshStatus:
        if self._last is None and not self._closed:
            st = self.status()
            self._last = st.to_json()
            return st
        while True:
            if not await self._next_change(self._refresh, timeout_ok=True):
                raise StopAsyncIteration
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._debounce
            while (left := deadline - loop.time()) > 0:
                if not await self._next_change(left, timeout_ok=False):
                    break
            if self._closed:
                raise StopAsyncIteration
            st = self.status()
            doc = st.to_json()
            if doc != self._last:
                self._last = doc
                return st

    async def _next_change(self, within: float, *, timeout_ok: bool) -> bool:
        """Wait for one change: True if one came (or ``timeout_ok`` and time ran out)."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(within):
                await anext(self._sub)
        except TimeoutError:
            return timeout_ok
        except StopAsyncIteration:
            self._closed = True
            return False
        return True

    async def aclose(self) -> None:
        """End the feed: a pending ``__anext__`` returns StopAsyncIteration."""
        self._closed = True
        closer = getattr(self._sub, "aclose", None)
        if closer is not None:
            await closer()
