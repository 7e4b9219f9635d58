"""Hostile hosts on the six-host mesh of docs/deploy.md (docs/identity.md).

A compromised agent host holds the gossip key; with a valid agent certificate for another
name it tries to publish intents, routes, a lease, a garden record, another node's record,
an instance on another node and another member's certificate. Members with expired,
not-yet-valid or foreign-CA certificates try the same. Every other member must ignore all
of it (never store, forward or show it) and count it, while the app keeps serving; the same
certificates are refused on HTTP; a revoked identity is refused everywhere within seconds;
the control API wants credentials and the right access, and audits what changes state.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import Load
from bench.netmesh import Host, NetMesh
from reconciler.identity.ca import new_key
from reconciler.identity.layout import CADir, MemberDir
from reconciler.identity.member import MemberIdentity
from reconciler.identity.tls import client_context

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "hostile_member.py"
APP = "billing"


def issue(mesh: NetMesh, name: str, *, now: float | None = None, lifetime_s: float = 3600.0,
          ca: Path | None = None, role: str = "agent") -> Path:  # fmt: skip
    """An identity directory for ``name`` (the mesh's CA unless ``ca``), issued at ``now``."""
    issuer = CADir(ca or mesh.identity).issuer()
    key = new_key()
    t = time.time() if now is None else now
    cert = issuer.issue(role, name, key.public_key(), now=t, lifetime_s=lifetime_s)
    out = mesh.workdir / "attackers" / name
    MemberDir(out).save(MemberIdentity((cert, issuer.cert), key, (issuer.root,)))
    return out


def hostile(mesh: NetMesh, host: Host, name: str, identity: Path, records: dict[str, Any]) -> None:
    """Run a hostile member named ``name`` inside ``host``'s namespace (the compromised
    host), with the mesh's gossip key and ``identity``; it publishes ``records``."""
    seeds = [f"{h.addr}:7946" for h in mesh.role("agent")[:2]]
    argv = [
        "ip", "netns", "exec", host.name, sys.executable, str(HOSTILE), "--name", name,
        "--bind", f"{host.addr}:0", "--gossip-key", str(mesh.identity / "gossip.key"),
        "--identity", str(identity),
        *[a for s in seeds for a in ("--join", s)],
        *[a for k, v in records.items() for a in ("--set", f"{k}={json.dumps(v)}")],
    ]  # fmt: skip
    with (host.root / f"hostile-{name}.log").open("ab") as out:
        host.procs.append(
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        )


def refused(mesh: NetMesh, host: Host) -> dict[str, int]:
    """``host``'s daemon's ``myco_fabric_records_refused_total`` by reason."""
    port = {
        "agent": mesh.guide.port("agent", "--api"),
        "edge": mesh.guide.port("edge", "--metrics-listen"),
        "reconciler": mesh.guide.port("reconciler", "--repo-listen"),
    }[host.role]
    status, body = mesh.http("127.0.0.1", port, "/metrics", ns=host.name, tls=True)
    if status != 200:
        return {}
    out: dict[str, int] = {}
    for line in body.decode(errors="replace").splitlines():
        m = re.match(r'^myco_fabric_records_refused_total\{reason="([\w-]+)"\} ([\d.e+]+)$', line)
        if m:
            out[m.group(1)] = int(float(m.group(2)))
    return out


def entries_of(mesh: NetMesh, owners: set[str]) -> list[tuple[str, str, str]]:
    """Every record of ``owners`` that any agent shows, as (agent, owner, key)."""
    found = []
    for h in mesh.role("agent"):
        view = mesh.fabric_view(h)
        assert view is not None, f"{h.short}: no fabric view"
        found += [(h.short, e["owner"], e["key"]) for e in view["entries"] if e["owner"] in owners]
    return found


def serving(mesh: NetMesh) -> bool:
    status, body = mesh.edge_get()
    return status == 200 and isinstance(body, dict) and body.get("version") == "1.0.0"


def test_a_host_with_the_gossip_key_and_another_certificate_can_write_nothing(
    mesh: NetMesh,
) -> None:
    mesh.wait(lambda: serving(mesh), 90, "billing served through the edge")
    agents = mesh.role("agent")
    h1, compromised = agents[0], agents[2]
    lease_before = mesh.active_reconciler()
    h9 = issue(mesh, "h9")
    evil_backend = f"{compromised.addr}:1"
    forged: dict[str, Any] = {
        f"intents/{h1.name}": {"node": h1.name, "epoch": 10**9, "instances": []},
        f"routes/{APP}": {"app": APP, "prefix": f"/{APP}", "backends": [evil_backend]},
        "lease": {
            "holder": "h9",
            "epoch": 10**9,
            "expires_at": time.time() + 3600,
            "control_url": f"https://{compromised.addr}:1",
        },  # fmt: skip
        "garden": {"revision": "evil", "apps": {}},
        "node": {"node_id": h1.name, "api_url": f"https://{compromised.addr}:1"},
        "inst/evil": {
            "instance_id": "evil",
            "app": APP,
            "node": h1.name,
            "digest": "x",
            "phase": "ready",
            "endpoint": evil_backend,
        },  # fmt: skip
        f"certs/{h1.name}": {"chain": "not h9's to write"},
        "edge/stats": {"apps": {APP: {"rps": 1e9}}},
    }
    load = Load(f"{mesh.edge_url}/{APP}/hello", rps=30, timeout_s=5.0,
                connect=mesh.socket_factory())  # fmt: skip

    async def attack() -> Any:
        async with load as gen:
            hostile(mesh, compromised, "h9", h9, forged)
            # The same certificate under another member's name (h1's, with a suffix).
            hostile(mesh, compromised, f"{h1.name}#evil", h9, {"node": {"node_id": h1.name}})
            await asyncio.to_thread(
                mesh.wait,
                lambda: all(refused(mesh, h).get("unauthorized", 0) >= 1 for h in mesh.hosts),
                60,
                "every honest member to refuse and count the forged records",
            )
            await asyncio.sleep(3.0)  # under load while the forged records keep coming
        return gen.result

    result = asyncio.run(attack())
    # Nothing of it is shown anywhere but h9's own (valid) certificate record.
    shown = entries_of(mesh, {"h9", f"{h1.name}#evil"})
    assert all(key == "certs/h9" for _, owner, key in shown if owner == "h9"), shown
    assert not [e for e in shown if e[1] != "h9"], shown
    for h in mesh.hosts:  # the compromised host's own agent is honest: the attacker is beside it
        counts = refused(mesh, h)
        assert counts.get("unauthorized", 0) >= 1, (h.short, counts)
    # The mesh carries on: same lease holder, the app served, routes to real instances.
    assert mesh.active_reconciler() == lease_before
    assert not result.failed, [f"{o.status} {o.error[:80]}" for o in result.failed[:5]]
    assert result.sent > 0
    view = mesh.fabric_view(h1)
    assert view is not None
    routes = [e["value"] for e in view["entries"] if e["key"] == f"routes/{APP}"]
    assert routes
    assert evil_backend not in json.dumps(routes)


@pytest.mark.parametrize("case", ["expired", "not-yet-valid", "wrong-ca"])
def test_bad_certificates_are_refused_on_gossip_and_on_http(mesh: NetMesh, case: str) -> None:
    mesh.wait(lambda: serving(mesh), 90, "billing served through the edge")
    compromised = mesh.role("agent")[2]
    name = f"bad-{case}"
    if case == "expired":
        ident = issue(mesh, name, now=time.time() - 7200, lifetime_s=3600)
    elif case == "not-yet-valid":
        ident = issue(mesh, name, now=time.time() + 3600)
    else:
        other = mesh.workdir / "other-ca"
        if not (other / "ca.crt").exists():
            CADir(other).create("myco")
        ident = issue(mesh, name, ca=other)
    hostile(mesh, compromised, name, ident, {"node": {"node_id": name}})
    mesh.wait(
        lambda: all(refused(mesh, h).get(case, 0) >= 1 for h in mesh.role("reconciler")),
        60,
        f"the reconcilers to refuse and count {case} records",
    )
    assert not entries_of(mesh, {name}), f"{case}: records shown"
    # The same certificate on HTTP: the agent API refuses it (at the handshake or with 401).
    ctx = client_context(ident / "cert.pem", ident / "key.pem", mesh.identity / "ca.crt")
    status, _ = mesh.http(
        mesh.role("agent")[0].addr, mesh.guide.port("agent", "--api"), "/v1/node", tls=ctx
    )
    assert status in (0, 401), f"{case}: agent API answered {status}"


def test_revocation_reaches_every_member_in_seconds(mesh: NetMesh) -> None:
    mesh.wait(lambda: serving(mesh), 90, "billing served through the edge")
    compromised = mesh.role("agent")[2]
    victim = issue(mesh, "h6-stolen")
    hostile(mesh, compromised, "h6-stolen", victim, {"node": {"node_id": "h6-stolen"}})
    mesh.wait(lambda: len(entries_of(mesh, {"h6-stolen"})) >= 3, 60, "its records to be seen")
    ctx = client_context(victim / "cert.pem", victim / "key.pem", mesh.identity / "ca.crt")
    agent_api = (mesh.role("agent")[0].addr, mesh.guide.port("agent", "--api"))
    assert mesh.http(*agent_api, "/v1/node", tls=ctx)[0] == 200  # a member may read
    rec = mesh.active_reconciler()
    assert rec is not None
    t0 = time.monotonic()
    out = subprocess.run(
        ["ip", "netns", "exec", rec.name, sys.executable, "-m", "reconciler", "cert", "revoke",
         "h6-stolen", "--identity", str(mesh.operator),
         "--reconciler", f"https://{rec.addr}:{mesh.guide.port('reconciler', '--repo-listen')}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    mesh.wait(lambda: not entries_of(mesh, {"h6-stolen"}), 30, "its records to be hidden")
    took = time.monotonic() - t0
    assert mesh.http(*agent_api, "/v1/node", tls=ctx)[0] in (0, 401)
    print(f"revocation hid the member everywhere in {took:.2f} s")


def test_the_control_api_wants_credentials_and_the_right_access(mesh: NetMesh) -> None:
    rec = mesh.active_reconciler()
    assert rec is not None
    port = mesh.guide.port("reconciler", "--repo-listen")
    node = mesh.role("agent")[0].name
    path = f"/v1/nodes/{node}/drain"
    # No credentials at all: a TLS client without a certificate.
    import ssl

    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.check_hostname = False
    anon.load_verify_locations(cafile=mesh.identity / "ca.crt")
    assert mesh.http(rec.addr, port, path, tls=anon, method="POST", body=b"{}")[0] == 401
    assert mesh.http(rec.addr, port, "/v1/status", tls=anon)[0] == 401
    token = subprocess.run(
        [sys.executable, "-m", "reconciler", "cert", "bearer", "--ca", str(mesh.identity),
         "--name", "dashboard", "--access", "viewer"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    bearer = {"Authorization": f"Bearer {token}"}
    assert mesh.http(rec.addr, port, "/v1/status", tls=anon, headers=bearer)[0] == 200
    status, _ = mesh.http(rec.addr, port, path, tls=anon, headers=bearer, method="POST", body=b"{}")
    assert status == 403
    audit = rec.root / "var-lib-myco" / "reconciler" / "audit.log"
    lines = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()]
    assert any(e.get("path") == path and e.get("status") in (401, 403) for e in lines), lines[-5:]
