"""Reaching a running mesh from the CLI: the agent API address and the fabric view.

The address comes from ``--api``, else from the state directory (``$MYCO_HOME`` or
``./.myco``), file ``mesh.json``, key ``agent_api`` (written by ``myco up``). A bearer
token is sent when ``<state>/api.token`` exists (agents bound off loopback require it).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from reconciler.errors import ConfigError, FabricError, UnavailableError

from .snapshot import FabricSnapshot, snapshot_from_json

MESH_FILE = "mesh.json"
TOKEN_FILE = "api.token"


def default_api(home: Path) -> str:
    """The agent API URL recorded in ``home/mesh.json``; :class:`ConfigError` if none."""
    path = home / MESH_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no running mesh recorded in {path} (start one with `myco up`, or pass --api URL)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    api = data.get("agent_api") if isinstance(data, dict) else None
    if not isinstance(api, str) or not api:
        raise ConfigError(f"{path} has no 'agent_api' address (pass --api URL)")
    return api.rstrip("/")


def auth_headers(home: Path) -> dict[str, str]:
    try:
        token = (home / TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


def normalize_api(api: str) -> str:
    api = api.strip().rstrip("/")
    if "://" not in api:
        api = "http://" + api
    return api


async def fetch_snapshot(
    session: aiohttp.ClientSession, api: str, prefix: str = ""
) -> FabricSnapshot:
    """``GET {api}/v1/fabric?prefix=``; :class:`UnavailableError` if the agent is not there."""
    url = f"{api}/v1/fabric"
    try:
        async with session.get(url, params={"prefix": prefix}) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200].strip()
                raise UnavailableError(f"{url}: HTTP {resp.status} {body}".rstrip())
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UnavailableError(f"cannot reach the agent API at {api}: {exc or 'timeout'}") from exc
    except ValueError as exc:
        raise FabricError(f"{url}: not JSON: {exc}") from exc
    return snapshot_from_json(data)
