"""The platform tags this host runs, and the check that a spore was built for one of them.

A spore whose dependencies were built (``build:`` in the garden) records the builder's
platform in its signed manifest (``build.platform``): ``"any"`` for pure code, else a tag
such as ``cp311-manylinux_x86_64`` (the CPython ABI, libc flavour and machine of the
interpreter the dependencies were installed for) or ``node20-linux_x64`` (Node's major
version, ``process.platform`` and ``process.arch``). A host runs:

* ``any``;
* ``<impl><major><minor>[t]-<libc>_<machine>`` for the ``python3`` on ``PATH`` (the
  workloads' interpreter, which they inherit): ``cp`` for CPython, ``pp`` for PyPy, a ``t``
  for a free-threaded build; ``manylinux`` on glibc, ``musllinux`` on musl;
* ``node<major>-<platform>_<arch>`` for the ``node`` on ``PATH``.

The interpreters are asked once, at agent start (:func:`detect`, bounded by a timeout);
the formatting is pure (:func:`python_tag`, :func:`node_tag`) and so is the check
(:func:`check_platform`). The reconciler places a spore only on nodes whose ``node`` record
lists its platform; the agent refuses anything else all the same, with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from typing import Any

from reconciler.errors import AgentError
from reconciler.spore.platforms import (
    ANY,
    NODE_PROBE,
    PYTHON_PROBE,
    node_tag,
    python_tag,
)

log = logging.getLogger("myco.agent")

PROBE_TIMEOUT_S = 5.0


class PlatformMismatch(AgentError):
    """The spore was built for a platform this host does not run (permanent)."""


def host_tags(python: dict[str, Any] | None, node: dict[str, Any] | None) -> tuple[str, ...]:
    """The tags a host with these interpreters runs: theirs, then ``any``."""
    tags = [python_tag(python) if python else "", node_tag(node) if node else ""]
    return (*(t for t in tags if t), ANY)


def runs(platform: str, platforms: Iterable[str]) -> bool:
    """Whether a host running ``platforms`` may start a spore built for ``platform``."""
    return platform in ("", ANY) or platform in platforms


def check_platform(platform: str, platforms: Iterable[str]) -> None:
    """Raise :class:`PlatformMismatch` unless a host running ``platforms`` runs ``platform``."""
    tags = tuple(platforms)
    if not runs(platform, tags):
        raise PlatformMismatch(f"built for {platform}; this host runs {', '.join(tags) or 'none'}")


def spore_platform(manifest: object) -> str:
    """The platform a spore's manifest says it was built for ("" when it has no build).

    Reads ``manifest.build.platform`` (a :class:`~reconciler.spore.manifest.SporeManifest`)
    or ``manifest["build"]["platform"]`` (its JSON), whichever the manifest offers.
    """
    if isinstance(manifest, dict):
        build = manifest.get("build")
    else:
        build = getattr(manifest, "build", None)
    if isinstance(build, dict):
        platform = build.get("platform", "")
    else:
        platform = getattr(build, "platform", "")
    return platform if isinstance(platform, str) else ""


async def probe(argv: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any] | None:
    """Run ``argv``, parse the one JSON object it prints; None (logged) if anything fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        log.warning("platform probe %s failed: %s", argv[0], exc.strerror or exc)
        return None
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.warning("platform probe %s gave no answer within %gs", argv[0], timeout_s)
        return None
    try:
        data = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        data = None
    if proc.returncode != 0 or not isinstance(data, dict):
        log.warning("platform probe %s failed (exit %s)", argv[0], proc.returncode)
        return None
    return data


async def detect(path: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[str, ...]:
    """The tags of the ``python3`` and ``node`` on ``path`` (default ``$PATH``), and ``any``.

    Workloads inherit the agent's ``PATH``, so these are the interpreters they will run.
    """
    search = os.environ.get("PATH", os.defpath) if path is None else path
    python3, node = shutil.which("python3", path=search), shutil.which("node", path=search)
    key = (python3, node)
    if key not in _DETECTED:  # once per process and pair of interpreters
        py_info = await probe([python3, "-c", PYTHON_PROBE], timeout_s) if python3 else None
        node_info = await probe([node, "-e", NODE_PROBE], timeout_s) if node else None
        _DETECTED[key] = host_tags(py_info, node_info)
    return _DETECTED[key]


_DETECTED: dict[tuple[str | None, str | None], tuple[str, ...]] = {}
