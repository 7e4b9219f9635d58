"""A debounced stream of :class:`MeshStatus`, driven by :meth:`FabricAPI.subscribe`.

The first status is yielded at once; after that, a change starts a window of
``debounce_s`` in which further changes are absorbed, then one new status is built and
yielded if it differs from the last one. With no change for ``refresh_s`` the status is
rebuilt anyway (member states such as ``suspect`` are not key changes) and, with
``heartbeat=True``, yielded even if unchanged (so a server notices a gone client). The
feed ends when the fabric stops or :meth:`aclose` is called.
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
        self,
        fabric: FabricAPI,
        *,
        debounce_s: float = 0.2,
        refresh_s: float = 5.0,
        heartbeat: bool = False,
    ) -> None:
        self._fabric = fabric
        self._debounce = debounce_s
        self._refresh = refresh_s
        self._heartbeat = heartbeat
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
            got = await self._next_change(self._refresh)
            if got is None:
                raise StopAsyncIteration
            if not got:  # quiet for refresh_s
                st = self.status()
                doc = st.to_json()
                if doc != self._last or self._heartbeat:
                    self._last = doc
                    return st
                continue
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._debounce
            while (left := deadline - loop.time()) > 0:
                if not await self._next_change(left):
                    break
            if self._closed:
                raise StopAsyncIteration
            st = self.status()
            doc = st.to_json()
            if doc != self._last:
                self._last = doc
                return st

    async def _next_change(self, within: float) -> bool | None:
        """Wait for one change: True if one came, False if none within, None if ended."""
        if self._closed:
            return None
        try:
            async with asyncio.timeout(within):
                await anext(self._sub)
        except TimeoutError:
            return False
        except StopAsyncIteration:
            self._closed = True
            return None
        return True

    async def aclose(self) -> None:
        """End the feed: a pending ``__anext__`` returns StopAsyncIteration."""
        self._closed = True
        closer = getattr(self._sub, "aclose", None)
        if closer is not None:
            await closer()
