"""Reaching a running mesh from a short-lived CLI verb.

The fabric is read through any agent's local API (``GET /v1/fabric``) into a read-only
:class:`SnapshotFabric`, which the same :class:`~.mirror.FabricMirror` reads as it reads a
live member. The active reconciler's control API is found in its garden record
(``control_url``). Addresses come from flags, else from ``<state>/mesh.json`` (written by
``myco up``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from reconciler.errors import ConfigError, UnavailableError
from reconciler.fabric.api import Change, JSONValue, Member
from reconciler.observe.snapshot import snapshot_from_json
from reconciler.reconcile.lease import decide, read_leases
from reconciler.records import KEY_GARDEN

TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass
class SnapshotFabric:
    """A frozen, read-only view of the fabric as one agent saw it (FabricAPI subset)."""

    entries: dict[tuple[str, str], JSONValue]
    name: str = "myco-cli"

    def view(
        self, prefix: str = "", *, include_gone: bool = False
    ) -> dict[tuple[str, str], JSONValue]:
        return {k: v for k, v in self.entries.items() if k[1].startswith(prefix)}

    def get(self, owner: str, key: str) -> JSONValue:
        return self.entries.get((owner, key))

    def publish(self, key: str, value: JSONValue) -> None:
        raise ConfigError("a fabric snapshot is read-only")

    def delete(self, key: str) -> None:
        raise ConfigError("a fabric snapshot is read-only")

    async def subscribe(self, prefix: str = "") -> AsyncIterator[Change]:  # pragma: no cover
        return
        yield

    def members(self) -> Sequence[Member]:
        return []

    async def join(self, addrs: Sequence[str]) -> int:
        return 0

    async def leave(self) -> None:
        return None


def mesh_record(state: Path) -> dict[str, Any]:
    """``<state>/mesh.json`` as a dict ({} when there is none)."""
    path = state / "mesh.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable mesh record: {exc}") from exc
    return data if isinstance(data, dict) else {}


def agent_url(explicit: str | None, state: Path) -> str:
    if explicit:
        return explicit.rstrip("/")
    url = mesh_record(state).get("agent_api")
    if not url:
        raise ConfigError(
            f"no mesh found: give --agent URL, or run `myco up` (no {state / 'mesh.json'})"
        )
    return str(url).rstrip("/")


async def snapshot(url: str, token: str | None = None) -> SnapshotFabric:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"{url}/v1/fabric", headers=headers) as resp,
        ):
            if resp.status != 200:
                raise UnavailableError(f"agent API {url}: HTTP {resp.status}")
            items = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UnavailableError(f"cannot read the fabric from {url}: {exc}") from exc
    parsed = snapshot_from_json(items)  # raises FabricError on a malformed answer
    return SnapshotFabric({(e.owner, e.key): e.value for e in parsed.entries})


def active_control_url(snap: SnapshotFabric, now: float) -> tuple[str, str]:
    """(holder name, control URL) of the active reconciler, or ("", "") if none holds."""
    records, max_epoch = read_leases(snap)
    holder = decide(records, max_epoch, now).holder
    if holder is None:
        return "", ""
    garden = snap.get(holder.holder, KEY_GARDEN)
    url = garden.get("control_url") if isinstance(garden, dict) else None
    return holder.holder, str(url or "")


async def control(
    url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Call the reconciler's control API; a refusal becomes a ConfigError with its message."""
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.request(method, f"{url.rstrip('/')}{path}", json=body) as resp,
        ):
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                message = data.get("error") if isinstance(data, dict) else None
                raise ConfigError(str(message or f"HTTP {resp.status}"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UnavailableError(f"cannot reach the reconciler at {url}: {exc}") from exc
    return data if isinstance(data, dict) else {}
