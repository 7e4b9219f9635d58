"""Apps with dependencies on a real local mesh (`myco up`): FastAPI and Express examples.

The reconciler builds each spore with its dependencies vendored (pip into
``_vendor/python``, ``npm ci`` into ``node_modules``), the agents start them with those on
``PYTHONPATH``/``NODE_PATH``, and the edge answers from both. The first run downloads the
packages; the build cache (``<state>/build-cache``) is kept between runs in
``$MYCO_TEST_BUILD_CACHE`` (default ``~/.cache/myco-tests/build-cache``), so later runs
build from it without the network.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import cast

import psutil
import pytest

from bench.localmesh import ROOT, LocalMesh, get_json, start_mesh, wait_serving
from reconciler.records import NodeRecord
from reconciler.repo import SporeRepo
from reconciler.spore.verify import read_manifest
from tests.mesh.conftest import assert_nothing_left

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not (shutil.which("node") and shutil.which("npm")),
        reason="Node.js and npm are not installed (apt-get install nodejs npm)",
    ),
]

APPS = ("fastapi-hello", "express-hello")
#: the example manifests: part of the default garden that `myco up` runs
MANIFESTS = ROOT / "garden"
CACHE = Path(
    os.environ.get("MYCO_TEST_BUILD_CACHE", Path.home() / ".cache" / "myco-tests" / "build-cache")
)


def garden() -> dict[str, str]:
    """The example manifests, their ``source`` pointing into the test's repository."""
    out = {}
    for app in APPS:
        text = (MANIFESTS / f"{app}.yaml").read_text()
        out[f"{app}.yaml"] = text
    return out


def instances(mesh: LocalMesh, app: str) -> list[psutil.Process]:
    out = []
    for p in mesh.processes():
        try:
            if p.environ().get("MYCO_APP") == app:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def agent_nodes(mesh: LocalMesh) -> list[NodeRecord]:
    """Every agent's ``node`` record, from its own API."""
    records = []
    apis = cast(list[str], mesh.record()["agent_apis"])
    for api in apis:
        req = urllib.request.Request(f"{api}/v1/node")  # loopback: no credentials
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            records.append(NodeRecord.from_json(json.loads(resp.read())))
    return records


def built_platforms(mesh: LocalMesh) -> dict[str, str]:
    """app -> the platform its spore in the mesh's repo was built for."""
    repo = SporeRepo(mesh.state / "repo")
    out = {}
    for entry in repo.list():
        with open(repo.path(entry.digest), "rb") as f:
            manifest, _, _ = read_manifest(f)
        out[manifest.name] = manifest.build.platform if manifest.build else ""
    return out


def test_fastapi_and_express_with_their_dependencies_answer_through_the_edge(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "state" / "build-cache"
    if CACHE.is_dir():
        shutil.copytree(CACHE, cache, symlinks=True)
    mesh = start_mesh(tmp_path, garden=garden(), workloads=APPS)
    try:
        for app in APPS:
            seen = wait_serving(mesh, instances=2, app=app, timeout=400)
            assert len(seen) == 2
            status, body = get_json(f"{mesh.url}/{app}/hello")
            assert status == 200
            assert body["app"] == app
        assert get_json(f"{mesh.url}/fastapi-hello/hello")[1]["message"] == "Hello from FastAPI"
        assert get_json(f"{mesh.url}/express-hello/hello")[1]["message"] == "Hello from Express"

        # The agents found the vendored dependencies where the builder put them.
        (py, *_) = instances(mesh, "fastapi-hello")
        assert py.environ()["PYTHONPATH"] == f"{py.cwd()}/_vendor/python"
        (js, *_) = instances(mesh, "express-hello")
        assert js.environ()["NODE_PATH"] == f"{js.cwd()}/node_modules"

        # The FastAPI spore holds compiled code (pydantic-core): built for this host's
        # Python, placed on agents that publish that tag (every local one); Express is pure.
        platforms = built_platforms(mesh)
        assert platforms["express-hello"] == "any"
        assert platforms["fastapi-hello"].startswith("cp3"), platforms
        for node in agent_nodes(mesh):
            assert platforms["fastapi-hello"] in node.platforms
            assert "any" in node.platforms
            assert any(t.startswith("cp3") for t in node.platforms), node.platforms
            assert any(t.startswith("node") for t in node.platforms), node.platforms
    finally:
        mesh.stop()
        if cache.is_dir():  # keep the builds for the next run
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(cache, CACHE, symlinks=True, dirs_exist_ok=True)
    assert mesh.proc.returncode == 0, mesh.log.read_text()[-3000:]
    assert_nothing_left(mesh)
