"""Enrolment with a one-time join token, renewal without a restart, revocation: against a
real reconciler CA served on loopback (HTTPS with mutual TLS, or plain HTTP)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from reconciler.clock import RealClock
from reconciler.errors import ConfigError, IdentityError, UnavailableError
from reconciler.fabric.fabric import open_memory_fabric
from reconciler.httpclient import one_attempt_session
from reconciler.identity.ca import load_certs, new_key
from reconciler.identity.enrol import (
    IdentitySpec,
    enrol,
    obtain,
    renew_over_http,
    renew_through_fabric,
    renewal_proof,
)
from reconciler.identity.layout import MemberDir
from reconciler.identity.live import LiveIdentity
from reconciler.identity.member import MemberIdentity
from reconciler.identity.tls import client_context
from reconciler.identity.tokens import make_token
from reconciler.records import KEY_NODE
from tests.helpers import async_wait_for
from tests.identity.lifecycle import CLUSTER, ca_server, make_ca, member


def join_token(server_issuer: object, name: str, role: str = "agent", ttl_s: float = 600) -> str:
    return make_token(server_issuer, "join", name, now=time.time(), ttl_s=ttl_s, role=role)  # type: ignore[arg-type]


# -- enrolment ---------------------------------------------------------------------------------


async def test_a_join_token_enrols_once_and_is_remembered_across_restarts(tmp_path: Path) -> None:
    async with ca_server(tmp_path) as srv:
        token = join_token(srv.issuer, "node-9")
        key = new_key()
        got = await enrol(srv.url, token, key, [srv.issuer.root])
        assert (got.principal.role, got.name, got.mesh) == ("agent", "node-9", "lifemesh")
        assert got.key is key
        srv.live.verifier.check_chain(list(got.chain), time.time())  # chains to the mesh
        with pytest.raises(IdentityError, match="already used"):
            await enrol(srv.url, token, new_key(), [srv.issuer.root])
        nonce_file = srv.state / "enrolled.json"
        assert len(json.loads(nonce_file.read_text())["used"]) == 1
    # A restarted reconciler (same state, same CA) still refuses it; a new token works.
    async with ca_server(tmp_path) as again:
        with pytest.raises(IdentityError, match="already used"):
            await enrol(again.url, token, new_key(), [again.issuer.root])
        other = await enrol(again.url, join_token(again.issuer, "node-9"), key, [srv.issuer.root])
        assert other.name == "node-9"


async def test_enrolment_refuses_bad_tokens_with_a_reason(tmp_path: Path) -> None:
    async with ca_server(tmp_path) as srv:
        roots = [srv.issuer.root]
        cases = {
            "not a myco token": "hello",
            "expired": join_token(srv.issuer, "n1", ttl_s=-5),
            "not a join token": make_token(
                srv.issuer, "bearer", "n1", now=time.time(), ttl_s=60, access="admin"
            ),
            "cannot make a member of role operator": join_token(srv.issuer, "n1", "operator"),
        }
        for reason, token in cases.items():
            with pytest.raises(IdentityError, match=reason):
                await enrol(srv.url, token, new_key(), roots)
        # A token of another mesh's CA is refused too.
        foreign = make_ca(tmp_path / "other-ca")
        with pytest.raises(IdentityError, match="issuing CA is unknown"):
            await enrol(srv.url, join_token(foreign.issuer(), "n1"), new_key(), roots)


async def test_a_standby_sends_the_new_host_to_the_next_reconciler(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    async with (
        ca_server(tmp_path / "a", active=False, ca_root=ca, name="rec-a") as standby,
        ca_server(tmp_path / "b", ca_root=ca, name="rec-b") as active,
    ):
        token = join_token(active.issuer, "node-3")
        with pytest.raises(UnavailableError, match="not the active reconciler"):
            await enrol(standby.url, token, new_key(), [active.issuer.root])  # (try later)
        got = await enrol([standby.url, active.url], token, new_key(), [active.issuer.root])
        assert got.name == "node-3"
        assert not (standby.state / "enrolled.json").exists()


async def test_the_token_is_never_sent_to_a_server_that_is_not_a_reconciler(
    tmp_path: Path,
) -> None:
    ca = make_ca(tmp_path / "ca")
    impostor = member(ca, "agent", "node-7", tmp_path / "impostor")  # a valid mesh member
    async with ca_server(tmp_path, server_identity=impostor) as srv:
        token = join_token(srv.issuer, "node-8")
        with pytest.raises(IdentityError, match="not a reconciler: refusing to send"):
            await enrol(srv.url, token, new_key(), [srv.issuer.root])
        assert not (srv.state / "enrolled.json").exists()  # nothing reached the handler
    async with ca_server(tmp_path) as real:  # so the token is still good
        assert (await enrol(real.url, token, new_key(), [real.issuer.root])).name == "node-8"


async def test_a_daemon_enrols_at_first_start_then_uses_what_it_saved(tmp_path: Path) -> None:
    async with ca_server(tmp_path) as srv:
        token_file = tmp_path / "join.token"
        token_file.write_text(join_token(srv.issuer, "node-4") + "\n")
        spec = IdentitySpec(
            dir=tmp_path / "agent-id", join_token=token_file, enrol_urls=(srv.url,),
            ca=srv.ca.root,
        )  # fmt: skip
        # A token for another name is refused before it is spent.
        with pytest.raises(ConfigError, match="names 'node-4', but this agent is 'node-5'"):
            await obtain(spec, "agent", CLUSTER, name="node-5")
        with pytest.raises(ConfigError, match="is for role 'agent', not edge"):
            await obtain(spec, "edge", CLUSTER)
        live = await obtain(spec, "agent", CLUSTER, name="node-4")
        assert live is not None
        assert live.name == "node-4"
        assert MemberDir(tmp_path / "agent-id").exists()
        assert (tmp_path / "agent-id" / "key.pem").stat().st_mode & 0o777 == 0o600
        # The next start loads it: the (spent) token is not used again.
        again = await obtain(spec, "agent", CLUSTER, name="node-4")
        assert again is not None
        assert again.principal.serial == live.principal.serial
        # An identity for another node is refused, clearly.
        with pytest.raises(ConfigError, match="is for agent 'node-4', but this agent is 'x'"):
            await obtain(IdentitySpec(dir=tmp_path / "agent-id"), "agent", CLUSTER, name="x")
    # No identity and no token: None by default, an error when --identity was given.
    empty = IdentitySpec(dir=tmp_path / "nothing", explicit=False)
    assert await obtain(empty, "agent", CLUSTER) is None
    with pytest.raises(ConfigError, match="no identity there"):
        await obtain(IdentitySpec(dir=tmp_path / "nothing"), "agent", CLUSTER)


# -- renewal -------------------------------------------------------------------------------------


async def test_renewal_swaps_the_certificate_without_a_restart(tmp_path: Path) -> None:
    """An agent whose certificate lives 3 s renews it through the reconciler the fabric
    names (mutual TLS), keeps its key, republishes its certificate record, keeps its open
    connections, and shows the new certificate on new ones."""
    async with ca_server(tmp_path) as srv:
        d = member(srv.ca, "agent", "node-1", tmp_path / "agent-id", lifetime_s=3.0)
        live = LiveIdentity(d, CLUSTER)
        first = live.principal
        async with open_memory_fabric(
            "node-1", srv.network, seeds=[srv.fabric.addr], guard=live.guard
        ) as fabric:
            fabric.publish(KEY_NODE, {"node_id": "node-1"})
            await async_wait_for(
                lambda: srv.fabric.get("node-1", KEY_NODE) is not None, within=10,
                what="the reconciler admits the agent's signed node record",
            )  # fmt: skip
            cert_record = srv.fabric.get("node-1", "certs/node-1")
            assert isinstance(cert_record, dict)
            first_chain = cert_record["chain"]
            connector = aiohttp.TCPConnector(ssl=live.client_ssl, limit=1)
            async with one_attempt_session(connector=connector) as session:
                async with session.get(f"{srv.url}/metrics") as resp:  # opens a connection
                    assert resp.status == 200
                task = asyncio.create_task(renew_through_fabric(live, fabric, clock=RealClock()))
                try:
                    await async_wait_for(
                        lambda: live.principal.serial != first.serial, within=15,
                        what="the certificate renewed",
                    )  # fmt: skip
                    async with session.get(f"{srv.url}/metrics") as resp:  # the same one
                        assert resp.status == 200
                    assert not task.done()  # the loop goes on: nothing restarted
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            new = live.principal
            assert (new.name, new.role) == ("node-1", "agent")
            assert new.public_key.public_bytes_raw() == first.public_key.public_bytes_raw()
            assert new.not_after > first.not_after
            on_disk = load_certs(d.cert.read_bytes())[0]
            assert on_disk.serial_number in {new.serial, live.principal.serial}
            assert srv.connections[0] == srv.connections[1]  # the open connection carried on
            # A new connection presents the renewed certificate.
            async with (
                one_attempt_session(connector=aiohttp.TCPConnector(ssl=live.client_ssl)) as s2,
                s2.get(f"{srv.url}/metrics") as resp,
            ):
                assert resp.status == 200
            # Peers get the new certificate record, and keep admitting what it signs.
            await async_wait_for(
                lambda: (srv.fabric.get("node-1", "certs/node-1") or {}).get("chain")
                != first_chain,
                within=10, what="the renewed certificate record reaches the reconciler",
            )  # fmt: skip
            fabric.publish(KEY_NODE, {"node_id": "node-1", "after": "renewal"})
            await async_wait_for(
                lambda: (srv.fabric.get("node-1", KEY_NODE) or {}).get("after") == "renewal",
                within=10, what="a record signed after the renewal is admitted",
            )  # fmt: skip


async def test_renewal_over_plain_loopback_http_is_proven_by_the_key(tmp_path: Path) -> None:
    """``myco up`` serves plain HTTP on loopback: the renewal request carries the current
    certificate and a fresh signature; a stale or forged proof is refused."""
    async with ca_server(tmp_path, tls=False) as srv:
        assert srv.url.startswith("http://")
        d = member(srv.ca, "edge", "edge-1", tmp_path / "edge-id")
        live = LiveIdentity(d, CLUSTER)
        got = await renew_over_http([srv.url], live)
        assert (got.name, got.principal.role) == ("edge-1", "edge")
        assert got.principal.serial != live.principal.serial
        async with one_attempt_session() as session:
            stale = renewal_proof(live.member, time.time() - 3600)
            async with session.post(f"{srv.url}/v1/renew", json=stale) as resp:
                assert resp.status == 401
                assert "stale" in (await resp.json())["error"]
            other = member(srv.ca, "agent", "node-2", tmp_path / "other")
            forged = renewal_proof(live.member, time.time())
            forged["chain"] = other.load().chain_pem()  # someone else's certificate
            async with session.post(f"{srv.url}/v1/renew", json=forged) as resp:
                assert resp.status == 401
                assert "signature" in (await resp.json())["error"]
            async with session.post(f"{srv.url}/v1/renew", json={}) as resp:
                assert resp.status == 401


async def test_failed_renewals_are_retried_and_warned_about_near_expiry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No reconciler answers: the loop keeps the certificate, retries, and warns once
    little life is left; it never ends by itself."""
    ca = make_ca(tmp_path / "ca")
    d = member(ca, "agent", "node-1", tmp_path / "agent-id", lifetime_s=2.0)
    live = LiveIdentity(d, CLUSTER)
    calls: list[float] = []

    async def unreachable() -> object:
        calls.append(time.monotonic())
        raise UnavailableError("no reconciler answers")

    from reconciler.identity.enrol import renewal_loop

    task = asyncio.create_task(renewal_loop(live, unreachable, clock=RealClock()))  # type: ignore[arg-type]
    try:
        await async_wait_for(lambda: len(calls) >= 2, within=15, what="a retry")
        await async_wait_for(
            lambda: any("cannot renew" in r.message or "expired" in r.message
                        for r in caplog.records if r.levelname in ("WARNING", "ERROR")),
            within=15, what="a warning as expiry nears",
        )  # fmt: skip
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert live.principal.name == "node-1"  # still the certificate it had


# -- revocation ------------------------------------------------------------------------------------


async def test_an_admin_revokes_a_member_everywhere(tmp_path: Path) -> None:
    async with ca_server(tmp_path) as srv:
        agent = member(srv.ca, "agent", "node-1", tmp_path / "agent-id")
        live = LiveIdentity(agent, CLUSTER)
        admin = member(srv.ca, "operator", "alice", tmp_path / "alice", access="admin")
        viewer = member(srv.ca, "operator", "bob", tmp_path / "bob", access="viewer")
        async with open_memory_fabric(
            "node-1", srv.network, seeds=[srv.fabric.addr], guard=live.guard
        ) as fabric:
            fabric.publish(KEY_NODE, {"node_id": "node-1"})
            await async_wait_for(
                lambda: srv.fabric.get("node-1", KEY_NODE) is not None, within=10,
                what="the agent's node record",
            )  # fmt: skip

            async def revoke(who: MemberDir, name: str) -> tuple[int, dict[str, object]]:
                ctx = client_context(who.cert, who.key, who.ca_cert)
                async with (
                    one_attempt_session(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
                    s.post(f"{srv.url}/v1/revoke", json={"name": name}) as resp,
                ):
                    return resp.status, await resp.json()

            assert (await revoke(viewer, "node-1"))[0] == 403
            assert (await revoke(agent, "node-1"))[0] == 403
            assert (await revoke(admin, "bad#name"))[0] == 400
            status, body = await revoke(admin, "node-1")
            assert status == 200, body
            assert "node-1 revoked" in str(body["message"])
            saved = json.loads((srv.state / "revocations.json").read_text())
            assert [e["name"] for e in saved["revocations"]] == ["node-1"]
            # Applied here at once: its records are hidden, its renewal refused.
            assert srv.fabric.get("node-1", KEY_NODE) is None
            with pytest.raises(UnavailableError, match="revoked"):
                await renew_over_http([srv.url], live)
            # The signed revocation list spreads: the member itself applies it.
            await async_wait_for(
                lambda: "node-1" in live.verifier.revocations.by_name, within=10,
                what="the revocation list reaches the agent",
            )  # fmt: skip
        # A reconciler started later on the same state publishes it again.
        async with ca_server(tmp_path) as again:
            assert "node-1" in again.live.verifier.revocations.by_name


async def test_a_reconciler_adopts_revocations_published_by_another(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    async with ca_server(tmp_path / "a", ca_root=ca, name="rec-a") as a:
        async with ca_server(tmp_path / "b", network=a.network, ca_root=ca, name="rec-b") as b:
            await b.fabric.join([a.fabric.addr])
            follow = asyncio.create_task(b.service.follow())
            try:
                a.live.verifier.revocations.add("node-6", time.time())
                a.service.publish()
                await async_wait_for(
                    lambda: (b.state / "revocations.json").exists(), within=10,
                    what="b saves a's revocation",
                )  # fmt: skip
            finally:
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)
            saved = json.loads((b.state / "revocations.json").read_text())
            assert [e["name"] for e in saved["revocations"]] == ["node-6"]


async def test_a_reconciler_keeps_or_reissues_its_own_certificate_and_renews_it(
    tmp_path: Path,
) -> None:
    from reconciler.identity.enrol import issue_own, issue_to_dir, reissue, renewal_loop

    ca = make_ca(tmp_path / "ca")
    issuer = ca.issuer()
    d = tmp_path / "rec-id"

    def raw(m: MemberIdentity) -> bytes:
        return m.key.public_key().public_bytes_raw()

    # At start: issued once, kept while more than half its life is left, then issued anew
    # (the same key), and for another name when --name changes.
    a = issue_own(ca, d, "rec", now=time.time())
    assert issue_own(ca, d, "rec", now=time.time() + 3600).principal.serial == a.principal.serial
    later = issue_own(ca, d, "rec", now=time.time() + 13 * 3600)  # 54% of 24 h gone
    assert later.principal.serial != a.principal.serial
    assert raw(later) == raw(a)
    assert issue_own(ca, d, "rec-2", now=time.time()).name == "rec-2"
    # While it runs: renewed from its issuing CA, the same name and key.
    issue_to_dir(issuer, "reconciler", "rec", d, now=time.time(), lifetime_s=2.0, key=a.key)
    live = LiveIdentity(MemberDir(d), CLUSTER)
    first = live.principal

    async def renew() -> MemberIdentity:
        return reissue(issuer, live.member, now=time.time())

    task = asyncio.create_task(renewal_loop(live, renew, clock=RealClock()))
    try:
        await async_wait_for(
            lambda: live.principal.serial != first.serial, within=15, what="a renewal"
        )
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (live.principal.role, live.name) == ("reconciler", "rec")
    assert raw(live.member) == raw(a)
    assert live.principal.not_after > first.not_after + 3600
    assert MemberDir(d).load().principal.serial == live.principal.serial  # saved
