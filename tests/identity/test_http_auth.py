"""Mutual TLS, authentication and authorization on the mesh's HTTP servers.

Real servers on 127.0.0.1 (the reconciler's control API and an agent's API, built by their
own ``make_app``/``serve_api``), real certificates and tokens made by
:mod:`reconciler.identity`, real aiohttp clients. A refusal may happen at the TLS layer
(the handshake fails: expired, not yet valid, another CA) or at the HTTP layer (401:
revoked, no credentials; 403: not enough access): the tests accept either where the
design allows either, and insist on the HTTP answer where only HTTP can give it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.api import serve_api
from reconciler.clock import RealClock
from reconciler.errors import ConfigError
from reconciler.fabric.fabric import open_memory_fabric
from reconciler.fabric.memory import MemoryNetwork
from reconciler.httpclient import one_attempt_session
from reconciler.identity.audit import AuditEntry, AuditLog, read_audit
from reconciler.identity.authz import ROUTE_ACCESS, permits, route_need
from reconciler.identity.httpauth import COOKIE, listener_auth
from reconciler.identity.live import LiveIdentity
from reconciler.reconcile.http import make_app
from reconciler.reconcile.loop import ReconcileLoop
from reconciler.reconcile.source import StaticSource, empty_result
from reconciler.records import Nutrients
from reconciler.spore.trust import TrustPolicy
from tests.helpers import async_wait_for
from tests.identity.pki import Pki
from tests.identity.servers import REFUSED, call, control_api

DIGEST = "0" * 64


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# -- the table -----------------------------------------------------------------------------


def test_the_route_table_says_who_may_do_what() -> None:
    drain = route_need("POST", "/v1/nodes/{node}/{verb}")
    assert drain == "operator"
    assert route_need("HEAD", "/spores/{digest}") == route_need("GET", "/spores/{digest}")
    assert route_need("DELETE", "/v1/status") is None
    assert route_need("POST", "/v1/revoke") == "admin"
    # people by access, members read and fetch spores but never change state
    assert permits("operator", "operator", drain)
    assert not permits(None, "viewer", drain)
    assert not permits("agent", "viewer", drain)
    assert permits("agent", "viewer", "member")
    assert permits("edge", "viewer", "viewer")
    assert not permits(None, "admin", "member")  # a person's token is no member
    assert not permits("operator", "admin", "member")
    assert permits(None, None, "public")
    assert all(
        need in ("public", "member", "viewer", "operator", "admin")
        for need in ROUTE_ACCESS.values()
    )


def test_an_open_listener_is_refused_off_loopback() -> None:
    assert listener_auth(None, "127.0.0.1", what="the agent API").open
    assert listener_auth(None, "::1", what="the agent API").open
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ConfigError, match="not loopback: it needs this member's identity"):
            listener_auth(None, host, what="the agent API")
    assert listener_auth(None, "0.0.0.0", what="the agent API", insecure=True).open


async def test_a_route_without_an_access_rule_is_never_served(tmp_path: Path) -> None:
    network = MemoryNetwork(RealClock())
    async with open_memory_fabric("rec", network) as fabric:
        rec = ReconcileLoop(fabric, StaticSource(empty_result()), None)

        async def handler(request: web.Request) -> web.Response:
            return web.Response(text="x")

        with pytest.raises(ConfigError, match="no access rule for POST /v1/unlisted"):
            make_app(rec, None, extra_routes=[web.post("/v1/unlisted", handler)])


# -- certificates ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["expired", "not-yet-valid", "wrong-ca", "revoked"])
async def test_a_bad_client_certificate_is_refused(pki: Pki, tmp_path: Path, kind: str) -> None:
    now = time.time()
    async with control_api(pki, tmp_path) as srv:
        status = f"{srv.url}/v1/status"
        good = pki.member("agent", "node-a")
        assert (await call(pki.client(good), "GET", status))[0] == 200
        if kind == "expired":
            bad = pki.member("agent", "node-b", now=now - 7200, lifetime_s=3600)
        elif kind == "not-yet-valid":
            bad = pki.member("agent", "node-b", now=now + 7200)
        elif kind == "wrong-ca":
            bad = Pki(tmp_path / "other").member("agent", "node-b")  # same mesh name
        else:
            bad = pki.member("agent", "node-b")
            srv.live.verifier.revocations.add("node-b", now + 1)
        got, body = await call(pki.client(bad), "GET", status)
        assert got in (REFUSED, 401), (got, body)
        if got == 401:
            assert kind.replace("-", " ") in body or kind in srv.auth.refused, body
        if kind == "revoked":  # only HTTP knows revocations: a clear 401, counted
            assert got == 401
            assert "revoked" in body
            assert srv.auth.refused["revoked"] >= 1
        # the good member is still served after the refusal
        assert (await call(pki.client(good), "GET", status))[0] == 200


async def test_a_revoked_identity_is_refused_on_its_open_connection(
    pki: Pki, tmp_path: Path
) -> None:
    async with control_api(pki, tmp_path) as srv:
        ident = pki.member("operator", "mallory", access="operator")
        connector = aiohttp.TCPConnector(ssl=pki.client(ident), limit=1)
        reused: list[object] = []
        trace = aiohttp.TraceConfig()

        async def on_reuse(*args: object) -> None:
            reused.append(args)

        trace.on_connection_reuseconn.append(on_reuse)
        async with one_attempt_session(connector=connector, trace_configs=[trace]) as s:
            async with s.get(f"{srv.url}/v1/status") as resp:
                assert resp.status == 200
                await resp.read()
            srv.live.verifier.revocations.add("mallory", time.time() + 1)
            async with s.post(f"{srv.url}/v1/nodes/n1/drain") as resp:
                assert resp.status == 401
                assert "revoked" in (await resp.json())["error"]
            assert reused, "the second request went over the first one's connection"
        assert "n1" not in srv.rec.overrides.drain


# -- people: certificates and tokens ------------------------------------------------------


async def test_the_control_api_authenticates_and_authorizes(pki: Pki, tmp_path: Path) -> None:
    async with control_api(pki, tmp_path) as srv:
        root_only = pki.client(None)
        status, drain = f"{srv.url}/v1/status", f"{srv.url}/v1/nodes/n1/drain"

        # nobody: 401, with a reason, on reads and writes alike
        got, body = await call(root_only, "GET", status)
        assert got == 401
        assert "no credentials" in body
        assert (await call(root_only, "POST", drain))[0] == 401
        assert (await call(root_only, "GET", f"{srv.url}/v1/no-such-route"))[0] == 401
        # plain HTTP to the TLS port gets nowhere
        assert (await call(None, "GET", status.replace("https://", "http://")))[0] != 200

        # a viewer token reads, and may not drain
        viewer = {"Authorization": f"Bearer {pki.token('bob', 'viewer')}"}
        assert (await call(root_only, "GET", status, viewer))[0] == 200
        got, body = await call(root_only, "POST", drain, viewer)
        assert got == 403
        assert "needs operator" in body
        # malformed, expired, from another CA: 401
        for bad in (
            "Bearer nope",
            "Basic Ym9iOnB3",
            f"Bearer {pki.token('bob', 'admin', ttl_s=-10)}",
            f"Bearer {Pki(tmp_path / 'other').token('bob', 'admin')}",
        ):
            got, body = await call(root_only, "POST", drain, {"Authorization": bad})
            assert got == 401, (bad, body)
        # an agent's certificate reads, never changes state
        agent = pki.client(pki.member("agent", "node-a"))
        assert (await call(agent, "GET", status))[0] == 200
        assert (await call(agent, "POST", drain))[0] == 403
        # an operator certificate with viewer access may not drain either
        looker = pki.client(pki.member("operator", "carol", access="viewer"))
        assert (await call(looker, "POST", drain))[0] == 403
        assert "n1" not in srv.rec.overrides.drain

        # an operator certificate drains; an operator token undrains
        alice = pki.client(pki.member("operator", "alice", access="operator"))
        got, body = await call(alice, "POST", drain)
        assert got == 200, body
        assert "n1" in srv.rec.overrides.drain
        dave = {"Authorization": f"Bearer {pki.token('dave', 'operator')}"}
        assert (await call(root_only, "POST", f"{srv.url}/v1/nodes/n1/undrain", dave))[0] == 200
        assert "n1" not in srv.rec.overrides.drain
        # the certificate routes: renewal is for members only
        assert (await call(agent, "POST", f"{srv.url}/v1/renew"))[0] == 200
        assert (await call(alice, "POST", f"{srv.url}/v1/renew"))[0] == 403

        # /metrics counts the refusals by reason
        got, text = await call(root_only, "GET", f"{srv.url}/metrics", viewer)
        assert got == 200
        assert 'myco_http_auth_refused_total{reason="no-credentials"}' in text
        assert 'myco_http_auth_refused_total{reason="forbidden"}' in text
        assert 'myco_http_auth_refused_total{reason="expired"}' in text

        # every state-changing call is in the audit log: who, how, what, the answer
        entries = read_audit(srv.audit)
        assert all(e["method"] == "POST" for e in entries)
        seen = [(e["who"], e["how"], e["path"], e["status"]) for e in entries]
        assert ("", "none", "/v1/nodes/n1/drain", 401) in seen
        assert ("bob", "token", "/v1/nodes/n1/drain", 403) in seen
        assert ("node-a", "cert", "/v1/nodes/n1/drain", 403) in seen
        assert ("carol", "cert", "/v1/nodes/n1/drain", 403) in seen
        assert ("alice", "cert", "/v1/nodes/n1/drain", 200) in seen
        assert ("dave", "token", "/v1/nodes/n1/undrain", 200) in seen
        assert ("node-a", "cert", "/v1/renew", 200) in seen
        assert len(seen) == 6 + 4 + 2  # the four bad credentials too
        alice_entry = next(e for e in entries if e["who"] == "alice")
        assert alice_entry["role"] == "operator"
        assert alice_entry["access"] == "operator"
        assert alice_entry["time"].endswith("Z")
        assert abs(alice_entry["at"] - time.time()) < 60
        refused = next(e for e in entries if e["who"] == "bob")
        assert "needs operator" in refused["reason"]


async def test_a_browser_logs_in_with_a_token_once(pki: Pki, tmp_path: Path) -> None:
    async with control_api(pki, tmp_path) as srv:
        token = pki.token("bob", "viewer")
        jar = aiohttp.CookieJar(unsafe=True)  # the cookie is for 127.0.0.1
        connector = aiohttp.TCPConnector(ssl=pki.client(None))
        async with one_attempt_session(connector=connector, cookie_jar=jar) as s:
            async with s.get(f"{srv.url}/ui/?token={token}", allow_redirects=False) as resp:
                assert resp.status == 303
                assert resp.headers["Location"] == "/ui/"
                cookie = resp.cookies[COOKIE]
                assert cookie["httponly"]
                assert cookie["secure"]
                assert cookie["samesite"] == "Strict"
            async with s.get(f"{srv.url}/ui/status") as resp:
                assert resp.status == 200
            # the cookie never authorizes a change, whatever the token's access
            async with s.post(f"{srv.url}/v1/nodes/n1/drain") as resp:
                assert resp.status == 401
        got, _ = await call(pki.client(None), "GET", f"{srv.url}/ui/?token=myco1.x.y")
        assert got == 401


# -- renewal -------------------------------------------------------------------------------


async def test_renewal_under_load_fails_no_request(pki: Pki, tmp_path: Path) -> None:
    async with control_api(pki, tmp_path) as srv:
        client = pki.live("agent", "node-a")
        old_server_serial = srv.live.member.chain[0].serial_number
        ok = failed = 0
        errors: list[str] = []
        renewed = asyncio.Event()
        seen_serials: set[str] = set()

        async def loop(session: aiohttp.ClientSession, until: asyncio.Event) -> None:
            nonlocal ok, failed
            after = 0
            while after < 20:
                try:
                    async with session.post(f"{srv.url}/v1/renew") as resp:
                        body = await resp.json()
                        if resp.status == 200:
                            ok += 1
                            seen_serials.add(body["serial"])
                        else:
                            failed += 1
                            errors.append(f"HTTP {resp.status}: {body}")
                except aiohttp.ClientError as exc:
                    failed += 1
                    errors.append(repr(exc))
                if until.is_set():
                    after += 1

        fresh = aiohttp.TCPConnector(ssl=client.client_ssl, force_close=True)  # a handshake each
        kept = aiohttp.TCPConnector(ssl=client.client_ssl)  # one connection across renewal
        async with (
            one_attempt_session(connector=fresh) as s1,
            one_attempt_session(connector=kept) as s2,
        ):
            tasks = [asyncio.create_task(loop(s, renewed)) for s in (s1, s1, s2, s2)]
            await async_wait_for(lambda: ok >= 40, within=30, what="requests before renewal")
            srv.live.renewed(pki.renewal(srv.live.dir, "reconciler"))
            client.renewed(pki.renewal(client.dir, "agent"))
            renewed.set()
            await asyncio.gather(*tasks)
        assert failed == 0, errors[:3]
        assert ok >= 40 + 4 * 20
        # the server saw the client's new certificate, and serves its own new one
        assert str(client.member.chain[0].serial_number) in seen_serials
        assert len(seen_serials) == 2
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(srv.url.rsplit(":", 1)[1]), ssl=pki.client(None)
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        from cryptography import x509

        serial = x509.load_der_x509_certificate(der).serial_number
        assert serial == srv.live.member.chain[0].serial_number != old_server_serial


# -- the agent API ---------------------------------------------------------------------------


@asynccontextmanager
async def running_agent(
    tmp: Path, live: LiveIdentity | None, bind: str = "127.0.0.1:0", *, open_access: bool = False
) -> AsyncIterator[Agent]:
    network = MemoryNetwork(RealClock())
    async with open_memory_fabric("node-a", network) as fabric:
        cfg = AgentConfig(
            node="node-a",
            state_dir=tmp / "agent",
            api_bind=bind,
            api_open_access=open_access,
            capacity=Nutrients(1000, 1024),
            enforcement="rlimit",
            platforms=("any",),
        )
        agent = Agent(cfg, fabric, TrustPolicy(()), live=live)
        task = asyncio.create_task(agent.run())
        try:
            await async_wait_for(
                lambda: agent.ready.is_set() or task.done(), within=20, what="agent ready"
            )
            if task.done():
                task.result()
            yield agent
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_agent_api_serves_members_over_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    async with running_agent(tmp_path, pki.live("agent", "node-a")) as agent:
        base = agent.api_url
        assert base.startswith("https://127.0.0.1:")
        peer = pki.client(pki.member("agent", "node-b"))
        got, body = await call(peer, "GET", f"{base}/v1/node")
        assert got == 200
        assert json.loads(body)["node_id"] == "node-a"
        # a member may ask for a spore (this one is not held: 404, past the door)
        assert (await call(peer, "GET", f"{base}/spores/{DIGEST}"))[0] == 404
        # nobody: 401 everywhere but the dashboard's static page
        nobody = pki.client(None)
        for path in ("/v1/node", "/v1/instances", "/v1/fabric", "/metrics", f"/spores/{DIGEST}"):
            assert (await call(nobody, "GET", base + path))[0] == 401, path
        assert (await call(nobody, "GET", base + "/ui/"))[0] == 200
        # a person's viewer token reads, but fetches no spore (members only)
        viewer = {"Authorization": f"Bearer {pki.token('bob', 'viewer')}"}
        assert (await call(nobody, "GET", f"{base}/v1/instances", viewer))[0] == 200
        assert (await call(nobody, "GET", f"{base}/spores/{DIGEST}", viewer))[0] == 403
        # another mesh's member is refused
        stranger = pki.client(Pki(tmp_path / "other").member("agent", "node-b"))
        assert (await call(stranger, "GET", f"{base}/v1/node"))[0] in (REFUSED, 401)
        got, text = await call(nobody, "GET", f"{base}/metrics", viewer)
        assert 'myco_http_auth_refused_total{reason="no-credentials"} 5.0' in text


async def test_the_agent_api_without_identity_is_open_on_loopback_only(tmp_path: Path) -> None:
    async with running_agent(tmp_path, None) as agent:
        assert agent.api_url.startswith("http://127.0.0.1:")
        got, body = await call(None, "GET", f"{agent.api_url}/v1/node")
        assert got == 200
        assert json.loads(body)["node_id"] == "node-a"
        # every route is open, the members' spore route too (not held here: 404)
        assert (await call(None, "GET", f"{agent.api_url}/spores/{DIGEST}"))[0] == 404
    network = MemoryNetwork(RealClock())
    async with open_memory_fabric("node-b", network) as fabric:
        config = AgentConfig(node="node-b", state_dir=tmp_path / "b", platforms=("any",))
        with pytest.raises(ConfigError, match="the agent API on 0.0.0.0 is not loopback"):
            await serve_api(Agent(config, fabric, TrustPolicy(())), "0.0.0.0:0")


async def test_an_agent_with_an_identity_may_skip_authentication_on_loopback_only(
    pki: Pki, tmp_path: Path
) -> None:
    live = pki.live("agent", "node-a")
    with pytest.raises(ConfigError, match="cannot skip authentication"):
        listener_auth(live, "0.0.0.0", what="the agent API", open_access=True)
    async with running_agent(tmp_path, live, open_access=True) as agent:
        assert agent.api_url.startswith("https://127.0.0.1:")  # still TLS
        got, body = await call(pki.client(None), "GET", f"{agent.api_url}/v1/node")
        assert got == 200
        assert json.loads(body)["node_id"] == "node-a"
        assert (await call(pki.client(None), "GET", f"{agent.api_url}/spores/{DIGEST}"))[0] == 404


async def test_the_audit_log_appends_whole_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "state" / "audit.log")
    entries = [
        AuditEntry(time.time(), f"op-{i}", "cert", "operator", "operator", "POST", f"/v{i}", 200)
        for i in range(50)
    ]
    await asyncio.gather(*(log.record(e) for e in entries))
    got = read_audit(log.path)
    assert sorted(e["who"] for e in got) == sorted(e.who for e in entries)
    assert log.written == 50
    assert (log.path.stat().st_mode & 0o777) == 0o600
    # a write that fails is counted and logged, never raised into the call
    blocked = AuditLog(tmp_path / "state" / "audit.log" / "not-a-dir" / "audit.log")
    await blocked.record(entries[0])
    assert blocked.failed == 1
