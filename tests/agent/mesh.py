"""Helpers for the agent's integration tests: a real spore, a served repo, a fabric peer."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from reconciler.fabric import Fabric
from reconciler.model import Dna, Health, RestartPolicy
from reconciler.records import (
    InstanceRecord,
    IntentInstance,
    IntentRecord,
    Nutrients,
    instance_key,
    intents_key,
)
from reconciler.repo.http import repo_app
from reconciler.repo.store import SporeRepo
from reconciler.spore.build import build_spore
from reconciler.spore.keys import generate_keypair

WORKLOADS = Path(__file__).parent / "workloads"


@dataclass(frozen=True)
class Published:
    digest: str
    pub: Path  # the signer's public key (the agent's trust)
    url: str  # base URL of the repo serving it


def make_spore(tmp: Path, name: str = "web", args: tuple[str, ...] = ()) -> tuple[Path, str, Path]:
    src = tmp / f"src-{name}"
    src.mkdir(parents=True)
    shutil.copy(WORKLOADS / "serve.py", src / "serve.py")
    keys = tmp / "keys"
    if (keys / "dev.key").exists():
        key, pub = keys / "dev.key", keys / "dev.pub"
    else:
        key, pub = generate_keypair(keys, "dev")
    dna = Dna(
        name,
        "1.0.0",
        src.resolve(),
        (sys.executable, "serve.py"),
        args=args,
        env=(("GREETING", "hi"),),
        nutrients=Nutrients(100, 64),
        health=Health(interval_s=0.1, timeout_s=1.0, grace_s=10.0),
        restart=RestartPolicy(backoff_initial_s=0.05, backoff_max_s=0.2, stop_grace_s=1.0),
    )
    built = build_spore(dna, key, tmp / "out")
    return built.path, built.digest, pub


@asynccontextmanager
async def serve_repo(root: Path) -> AsyncIterator[tuple[SporeRepo, str]]:
    repo = SporeRepo(root)
    runner = web.AppRunner(repo_app(repo), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield repo, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def intent(node: str, epoch: int, *instances: IntentInstance) -> dict[str, object]:
    return IntentRecord(node, epoch, revision=f"r{epoch}", instances=instances).to_json()


def one(iid: str, app: str, digest: str, urls: tuple[str, ...]) -> IntentInstance:
    return IntentInstance(iid, app, digest, "1.0.0", Nutrients(100, 64), fetch_urls=urls)


def instance_seen(fabric: Fabric, node: str, iid: str) -> InstanceRecord | None:
    value = fabric.get(node, instance_key(iid))
    return InstanceRecord.from_json(value) if value is not None else None


def publish_intent(fabric: Fabric, node: str, epoch: int, *instances: IntentInstance) -> None:
    fabric.publish(intents_key(node), intent(node, epoch, *instances))  # type: ignore[arg-type]
