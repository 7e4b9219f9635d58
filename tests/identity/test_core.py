"""Identity, unit by unit: names, the CA and the verifier, the write table, tokens, renewal.

No network and no wall-clock waits: every time is passed in. Certificates come from
:class:`bench.identity.Pki` (a root CA and an issuing CA in memory, the way ``myco init``
makes them).
"""

from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.identity import Pki
from reconciler.errors import ConfigError, IdentityError
from reconciler.identity.authz import access_of, allows, may_write
from reconciler.identity.ca import Issuer, certs_pem, key_pem
from reconciler.identity.layout import CADir, MemberDir, mesh_of, verifier_for
from reconciler.identity.names import (
    ROLES,
    check_mesh,
    check_name,
    member_name,
    owner_matches,
    parse_spiffe,
    spiffe_id,
)
from reconciler.identity.renew import RENEW_FROM, RENEW_TO, renew_at, retry_delay, should_warn
from reconciler.identity.tokens import check_token, make_token
from reconciler.identity.verify import Revocations, Verifier

NOW = 1_764_000_000.0
DAY = 86400.0


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("prod", now=NOW)


@pytest.fixture(scope="module")
def other_pki() -> Pki:
    """Another CA that happens to use the same mesh name: must never be trusted."""
    return Pki.create("prod", now=NOW)


def reason(exc: pytest.ExceptionInfo[IdentityError]) -> str:
    return exc.value.reason


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("h1", True),
        ("edge-1.example_a", True),
        ("9lives", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("-h1", False),
        (".h1", False),
        ("h1#w0", False),  # '#' separates a member name's suffix: never in a cert name
        ("h1/x", False),
        ("h 1", False),
        ("hé", False),
    ],
)
def test_check_name(name: str, ok: bool) -> None:
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(IdentityError, match="not valid"):
            check_name(name)


@pytest.mark.parametrize(
    ("mesh", "ok"),
    [("prod", True), ("eu-1.prod", True), ("a", True), ("Prod", False), ("-a", False),
     ("a-", False), ("", False), ("a_b", False), ("a" * 64, False)],
)  # fmt: skip
def test_check_mesh(mesh: str, ok: bool) -> None:
    if ok:
        assert check_mesh(mesh) == mesh
    else:
        with pytest.raises(IdentityError, match="mesh name"):
            check_mesh(mesh)


@pytest.mark.parametrize("role", ROLES)
def test_spiffe_round_trip(role: str) -> None:
    uri = spiffe_id("prod", role, "h1")
    assert uri == f"spiffe://prod/{role}/h1"
    assert parse_spiffe(uri) == ("prod", role, "h1")


@pytest.mark.parametrize(
    "uri",
    [
        "https://prod/agent/h1",
        "spiffe://prod/agent",
        "spiffe://prod/agent/h1/extra",
        "spiffe://prod/root/h1",  # no such role
        "spiffe://Prod/agent/h1",
        "spiffe://prod/agent/h1#w0",
        "spiffe://prod/app/billing",  # an app identity is not a member
        "spiffe://prod",
    ],
)
def test_parse_spiffe_refuses(uri: str) -> None:
    with pytest.raises(IdentityError):
        parse_spiffe(uri)


@pytest.mark.parametrize(
    ("name", "owner", "ok"),
    [
        ("h1", "h1", True),
        ("h1", "h1#w0", True),
        ("h1", "h1#w0#1", True),
        ("h1", "h10", False),  # a prefix of another name is not that name
        ("h1", "h10#w0", False),
        ("h1", "h", False),
        ("h1", "xh1", False),
        ("h1", "h1x#w0", False),
        ("h1", "H1", False),
        ("h10", "h1", False),
    ],
)
def test_owner_matches(name: str, owner: str, ok: bool) -> None:
    assert owner_matches(name, owner) is ok


def test_member_name() -> None:
    assert member_name("edge-1") == "edge-1"
    assert member_name("edge-1", "w0") == "edge-1#w0"
    assert owner_matches("edge-1", member_name("edge-1", "w3"))


# --- the CA and the verifier ------------------------------------------------------------


def test_a_valid_member_certificate(pki: Pki) -> None:
    m = pki.member("agent", "h1", now=NOW)
    p = pki.verifier().check_chain(list(m.chain), NOW)
    assert (p.mesh, p.role, p.name, p.uri) == ("prod", "agent", "h1", "spiffe://prod/agent/h1")
    assert p.not_before == NOW - 60  # backdated a minute for clock skew between hosts
    assert p.not_after == NOW + DAY
    assert p.access is None
    assert p.public_key.public_bytes_raw() == m.key.public_key().public_bytes_raw()
    # The leaf alone is enough once the verifier has seen the issuing CA.
    v = pki.verifier()
    with pytest.raises(IdentityError) as exc:
        v.check_chain([m.chain[0]], NOW)
    assert reason(exc) == "wrong-ca"
    v.issuer(pki.issuer.cert, NOW)
    assert v.check_chain([m.chain[0]], NOW).name == "h1"


def test_operator_certificates_carry_an_access_level(pki: Pki) -> None:
    key = pki.member("agent", "x").key
    for access in ("viewer", "operator", "admin"):
        cert = pki.issuer.issue("operator", "ann", key.public_key(), now=NOW, access=access)
        p = pki.verifier().check_chain([cert, pki.issuer.cert], NOW)
        assert (p.role, p.access) == ("operator", access)
        assert access_of(p.role, p.access) == access


@pytest.mark.parametrize(
    ("issued_at", "lifetime", "checked_at", "why"),
    [
        (NOW - 2 * DAY, DAY, NOW, "expired"),
        (NOW, DAY, NOW + DAY + 1, "expired"),
        (NOW + 3600, DAY, NOW, "not-yet-valid"),
        (NOW, DAY, NOW - 61, "not-yet-valid"),  # before the one-minute backdating
    ],
)
def test_validity_window(
    pki: Pki, issued_at: float, lifetime: float, checked_at: float, why: str
) -> None:
    m = pki.member("agent", "h1", now=issued_at, lifetime_s=lifetime)
    with pytest.raises(IdentityError) as exc:
        pki.verifier().check_chain(list(m.chain), checked_at)
    assert reason(exc) == why


def test_another_ca_is_refused(pki: Pki, other_pki: Pki) -> None:
    stranger = other_pki.member("agent", "h1", now=NOW)
    v = pki.verifier()
    for chain in (list(stranger.chain), [stranger.chain[0]], [stranger.chain[0], pki.issuer.cert]):
        with pytest.raises(IdentityError) as exc:
            v.check_chain(chain, NOW)
        assert reason(exc) == "wrong-ca"
    with pytest.raises(IdentityError) as exc:
        v.issuer(other_pki.issuer.cert, NOW)
    assert reason(exc) == "wrong-ca"


def test_a_ca_certificate_is_not_a_member(pki: Pki) -> None:
    v = pki.verifier()
    for chain in ([pki.issuer.cert], [pki.issuer.cert, pki.root], [pki.root]):
        with pytest.raises(IdentityError) as exc:
            v.check_chain(chain, NOW)
        assert reason(exc) == "bad-certificate"


def test_a_certificate_for_another_mesh_is_refused(pki: Pki) -> None:
    # Signed by this mesh's own issuing CA, but naming another mesh.
    rogue = Issuer(pki.issuer.cert, pki.issuer.key, pki.root, "staging")
    key = pki.member("agent", "x").key
    cert = rogue.issue("agent", "h1", key.public_key(), now=NOW)
    with pytest.raises(IdentityError, match="mesh 'staging'") as exc:
        pki.verifier().check_chain([cert, pki.issuer.cert], NOW)
    assert reason(exc) == "wrong-ca"
    # And a verifier for another mesh name refuses this mesh's members.
    good = pki.member("agent", "h1", now=NOW)
    with pytest.raises(IdentityError) as exc:
        Verifier([pki.root], "staging").check_chain(list(good.chain), NOW)
    assert reason(exc) == "wrong-ca"


def test_revoked_by_name_before_a_time(pki: Pki) -> None:
    v = pki.verifier()
    old = pki.member("agent", "h1", now=NOW)
    other = pki.member("agent", "h2", now=NOW)
    assert v.revocations.add("h1", NOW + 10)
    assert not v.revocations.add("h1", NOW + 5)  # an earlier cut-off changes nothing
    with pytest.raises(IdentityError) as exc:
        v.check_chain(list(old.chain), NOW + 20)
    assert reason(exc) == "revoked"
    assert v.check_chain(list(other.chain), NOW + 20).name == "h2"
    # Issued a second before the revocation: revoked. Issued a second after it (a
    # re-enrolled host; its not_before is backdated a minute, before the cut-off): valid.
    just_before = pki.member("agent", "h1", now=NOW + 9)
    with pytest.raises(IdentityError) as exc:
        v.check_chain(list(just_before.chain), NOW + 20)
    assert reason(exc) == "revoked"
    fresh = pki.member("agent", "h1", now=NOW + 11)
    assert fresh.principal.not_before < NOW + 10
    assert v.check_chain(list(fresh.chain), NOW + 20).name == "h1"
    assert v.revocations.to_json() == [{"name": "h1", "before": NOW + 10}]


def test_revocations_merge_reports_what_changed() -> None:
    r = Revocations()
    assert r.merge([("a", 1.0), ("b", 2.0)]) == ["a", "b"]
    assert r.merge([("a", 1.0), ("b", 3.0), ("c", 0.5)]) == ["b", "c"]
    assert r.by_name == {"a": 1.0, "b": 3.0, "c": 0.5}


def test_the_parse_cache_still_checks_time_and_revocation(pki: Pki) -> None:
    m = pki.member("agent", "h1", now=NOW)
    pem = m.chain_pem()
    v = pki.verifier()
    assert v.check_pem(pem, NOW).name == "h1"
    assert pem in v._cache  # the second call is a cache hit: parsing is not repeated
    with pytest.raises(IdentityError) as exc:
        v.check_pem(pem, NOW + 2 * DAY)
    assert reason(exc) == "expired"
    with pytest.raises(IdentityError) as exc:
        v.check_pem(pem, NOW - 3600)
    assert reason(exc) == "not-yet-valid"
    assert v.check_pem(pem, NOW + 1).name == "h1"
    v.revocations.add("h1", NOW + 5)
    with pytest.raises(IdentityError) as exc:
        v.check_pem(pem, NOW + 6)
    assert reason(exc) == "revoked"


def test_garbage_is_not_a_certificate(pki: Pki) -> None:
    for text in ("", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(IdentityError) as exc:
            pki.verifier().check_pem(text, NOW)
        assert reason(exc) == "bad-certificate"


def test_ca_and_member_directories_round_trip(tmp_path: Path) -> None:
    ca = CADir(tmp_path / "ca")
    ca.create("prod")
    assert ca.exists()
    assert oct((tmp_path / "ca" / "issuer.key").stat().st_mode & 0o777) == "0o600"
    issuer = ca.issuer()
    assert issuer.mesh == "prod"
    assert mesh_of(issuer.root) == "prod"
    member = Pki("prod", issuer.root, issuer.key, issuer).member("edge", "e1")
    d = MemberDir(tmp_path / "e1")
    d.save(member)
    loaded = d.load()
    assert loaded.name == "e1"
    assert loaded.principal.role == "edge"
    assert verifier_for(list(loaded.roots)).check_chain(list(loaded.chain), time.time())
    # A key that is not the certificate's is refused on load.
    d.key.write_bytes(b"not a key")
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key"):
        d.load()
    # A second CA directory for the same mesh name: its members are strangers here.
    second = CADir(tmp_path / "ca2")
    second.create("prod")
    i2 = second.issuer()
    stranger = Pki("prod", i2.root, i2.key, i2).member("edge", "e1")
    with pytest.raises(IdentityError) as exc:
        verifier_for(list(loaded.roots)).check_chain(list(stranger.chain), time.time())
    assert reason(exc) == "wrong-ca"
    other = Pki.create("prod").member("edge", "e1")
    d.key.write_bytes(key_pem(other.key))
    with pytest.raises(ConfigError, match="is not the key of"):
        d.load()


def test_certs_pem_round_trip(pki: Pki) -> None:
    m = pki.member("agent", "h1", now=NOW)
    assert certs_pem(m.chain) == m.chain_pem()
    assert m.chain_pem().count("BEGIN CERTIFICATE") == 2


# --- the write table --------------------------------------------------------------------

MEMBERS = ("agent", "edge", "reconciler")
ALL = (*MEMBERS, "operator")

#: key -> the roles that may write it (as member "h1", whose certificate name is "h1").
WRITE_TABLE: dict[str, tuple[str, ...]] = {
    "node": MEMBERS,
    "certs/h1": MEMBERS,
    "certs/h2": (),  # somebody else's certificate record
    "certs/": (),
    "inst/h1-billing-1": ("agent",),
    "inst/": ("agent",),
    "intents/h1": ("reconciler",),
    "intents/h2": ("reconciler",),
    "routes/billing": ("reconciler",),
    "lease": ("reconciler",),
    "garden": ("reconciler",),
    "revocations": ("reconciler",),
    "secrets/h1/db": ("reconciler",),
    "edge/stats": ("edge",),
    "edge/stats/x": (),
    "intents": (),  # the family needs its slash
    "routes": (),
    "instances/x": (),
    "nodes": (),
    "lease/x": (),
    "bench/key": (),  # a key no table row names: nobody
    "": (),
}


@pytest.mark.parametrize("role", ALL)
@pytest.mark.parametrize("key", sorted(WRITE_TABLE))
def test_may_write_table(key: str, role: str) -> None:
    allowed = role in WRITE_TABLE[key]
    assert may_write(role, "h1", "h1", key) is allowed
    assert may_write(role, "h1", "h1#w0", key) is allowed  # a suffixed member: the same
    # Never as a member whose name is not the certificate's (or a suffix of it).
    for owner in ("h10", "h2", "h", "h10#w0", "x#h1"):
        assert may_write(role, "h1", owner, key) is False


def test_access_levels() -> None:
    assert [allows(a, "operator") for a in ("viewer", "operator", "admin")] == [
        False,
        True,
        True,
    ]
    assert allows("admin", "admin")
    assert not allows(None, "viewer")
    assert not allows("x", "viewer")
    assert access_of("agent", None) == "viewer"
    assert access_of("operator", "bogus") == "viewer"
    assert access_of("nobody", None) is None


# --- tokens -----------------------------------------------------------------------------


@pytest.fixture
def verifier(pki: Pki) -> Verifier:
    v = pki.verifier()
    v.issuer(pki.issuer.cert, NOW)  # as every member has: its own chain carries it
    return v


def test_bearer_and_join_tokens(pki: Pki, verifier: Verifier) -> None:
    t = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600, access="operator")
    tok = check_token(t, verifier, NOW + 10, "bearer")
    assert (tok.kind, tok.name, tok.access, tok.role, tok.mesh) == (
        "bearer", "ann", "operator", None, "prod"
    )  # fmt: skip
    j = make_token(pki.issuer, "join", "h7", now=NOW, ttl_s=600, role="edge")
    tok = check_token(" " + j + "\n", verifier, NOW + 10, "join")
    assert (tok.kind, tok.name, tok.role, tok.access) == ("join", "h7", "edge", None)
    assert tok.exp == int(NOW + 600)
    assert len(tok.nonce) == 24


def _refused(text: str, verifier: Verifier, now: float, kind: str = "bearer") -> str:
    with pytest.raises(IdentityError) as exc:
        check_token(text, verifier, now, kind)  # type: ignore[arg-type]
    return exc.value.reason


def test_expired_and_future_tokens(pki: Pki, verifier: Verifier) -> None:
    t = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600)
    assert _refused(t, verifier, NOW + 3601) == "expired"
    future = make_token(pki.issuer, "bearer", "ann", now=NOW + 600, ttl_s=3600)
    assert _refused(future, verifier, NOW) == "not-yet-valid"
    assert check_token(future, verifier, NOW + 599, "bearer").name == "ann"  # skew allowed


def test_a_token_of_the_wrong_kind(pki: Pki, verifier: Verifier) -> None:
    bearer = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600, access="admin")
    join = make_token(pki.issuer, "join", "h7", now=NOW, ttl_s=600)
    assert _refused(bearer, verifier, NOW, "join") == "malformed"
    assert _refused(join, verifier, NOW, "bearer") == "malformed"


def _payload(token: str) -> dict[str, object]:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))  # type: ignore[no-any-return]


def _with_payload(token: str, body: dict[str, object]) -> str:
    prefix, _, sig = token.split(".")
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return f"{prefix}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{sig}"


def test_a_tampered_token_is_refused(pki: Pki, verifier: Verifier) -> None:
    t = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600, access="viewer")
    body = _payload(t)
    assert body["access"] == "viewer"
    for change in ({"access": "admin"}, {"exp": int(NOW + 10 * DAY)}, {"name": "bob"}):
        assert _refused(_with_payload(t, body | change), verifier, NOW) == "bad-signature"
    prefix, payload, sig = t.split(".")
    other_sig = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600).split(".")[2]
    assert _refused(f"{prefix}.{payload}.{other_sig}", verifier, NOW) == "bad-signature"
    for junk in ("", "myco1.", "myco1.a.b.c", "bearer abc", "myco1.!!!.x", "myco1.e30.x"):
        assert _refused(junk, verifier, NOW) in ("malformed", "bad-signature", "wrong-ca")


def test_a_token_from_an_unknown_issuer(pki: Pki, other_pki: Pki, verifier: Verifier) -> None:
    t = make_token(other_pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600, access="admin")
    assert _refused(t, verifier, NOW) == "wrong-ca"
    # Our own issuer, unknown to a verifier that has not seen it verified yet.
    mine = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600)
    assert _refused(mine, pki.verifier(), NOW) == "wrong-ca"
    # Signed by our issuing CA but naming another mesh.
    rogue = Issuer(pki.issuer.cert, pki.issuer.key, pki.root, "staging")
    assert _refused(make_token(rogue, "bearer", "ann", now=NOW, ttl_s=60), verifier, NOW) == (
        "wrong-ca"
    )


def test_a_token_of_a_revoked_name(pki: Pki, verifier: Verifier) -> None:
    t = make_token(pki.issuer, "bearer", "ann", now=NOW, ttl_s=3600)
    verifier.revocations.add("ann", NOW + 1)
    assert _refused(t, verifier, NOW + 2) == "revoked"
    later = make_token(pki.issuer, "bearer", "ann", now=NOW + 5, ttl_s=3600)
    assert check_token(later, verifier, NOW + 6, "bearer").name == "ann"
    other = make_token(pki.issuer, "bearer", "bob", now=NOW, ttl_s=3600)
    assert check_token(other, verifier, NOW + 2, "bearer").name == "bob"


# --- renewal ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    not_before=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    life=st.floats(min_value=1.0, max_value=10 * 365 * DAY, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_renew_at_is_between_half_and_seven_tenths_of_the_life(
    not_before: float, life: float, seed: int
) -> None:
    at = renew_at(not_before, not_before + life, random.Random(seed))
    eps = 1e-6 * max(1.0, not_before)
    assert not_before + RENEW_FROM * life - eps <= at <= not_before + RENEW_TO * life + eps


def test_renew_at_spreads_a_fleet() -> None:
    rng = random.Random(7)
    points = [renew_at(0.0, 100.0, rng) for _ in range(1000)]
    assert min(points) < 52
    assert max(points) > 68


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(min_value=-5, max_value=10**6),
    base=st.floats(min_value=0.01, max_value=60.0),
    cap=st.floats(min_value=1.0, max_value=3600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_retry_delay_is_bounded(attempt: int, base: float, cap: float, seed: int) -> None:
    d = retry_delay(attempt, random.Random(seed), base=base, cap=cap)
    full = min(cap, base * 2.0 ** min(max(0, attempt), 64))
    assert 0.5 * full <= d <= full <= cap


def test_retry_delay_backs_off_then_caps() -> None:
    rng = random.Random(1)
    tops = [max(retry_delay(a, rng) for _ in range(50)) for a in range(12)]
    assert tops[0] <= 1.0
    assert tops[3] <= 8.0
    assert tops[4] > 8.0 * 0.5
    assert all(t <= 300.0 for t in tops)
    assert tops[-1] > 150.0


@pytest.mark.parametrize(
    ("now", "warn"), [(0.0, False), (79.0, False), (80.5, True), (100.0, True), (150.0, True)]
)
def test_should_warn_when_a_fifth_of_the_life_is_left(now: float, warn: bool) -> None:
    assert should_warn(0.0, 100.0, now) is warn
