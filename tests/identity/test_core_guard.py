"""The record guard alone (no network): what it admits, what it refuses and why, parking,
revocation, renewal, and that nothing a peer sends makes it raise.

A record is ``(owner, key, version, value, sig)`` as the fabric engine hands it over.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.identity import Pki
from reconciler.identity.guard import (
    MAX_PARKED_PER_OWNER,
    PENDING,
    RecordGuard,
    b64,
    canonical,
    record_message,
    unb64,
)
from reconciler.identity.layout import MemberDir
from reconciler.identity.live import LiveIdentity
from reconciler.identity.member import MemberIdentity

NOW = 1_764_000_000.0
DAY = 86400.0
CLUSTER = "myco"


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("prod", now=NOW)


@pytest.fixture(scope="module")
def idents(pki: Pki) -> dict[str, MemberIdentity]:
    return {
        "r1": pki.member("reconciler", "r1", now=NOW),
        "r2": pki.member("reconciler", "r2", now=NOW),
        "h1": pki.member("agent", "h1", now=NOW),
        "h2": pki.member("agent", "h2", now=NOW),
        "e1": pki.member("edge", "e1", now=NOW),
        "ann": pki.member("operator", "ann", now=NOW),
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reader(pki: Pki, idents: dict[str, MemberIdentity], clock: Clock) -> RecordGuard:
    """r1's guard: it admits (or not) what the others write."""
    return pki.guard(idents["r1"], wall=clock)


def sign(ident: MemberIdentity, owner: str, key: str, version: int, value: Any) -> str:
    return b64(ident.key.sign(record_message(CLUSTER, owner, key, version, value)))


def cert(ident: MemberIdentity) -> dict[str, Any]:
    return {"chain": ident.chain_pem()}


def learn(reader: RecordGuard, ident: MemberIdentity, owner: str, version: int = 1) -> None:
    """``owner``'s certificate record arrives and is stored."""
    key, value = f"certs/{ident.name}", cert(ident)
    assert reader.admit(owner, key, version, value, sign(ident, owner, key, version, value)) == ""
    assert reader.applied(owner, key, version, value) == []


def admit(reader: RecordGuard, ident: MemberIdentity, owner: str, key: str, value: Any) -> str:
    return reader.admit(owner, key, 10, value, sign(ident, owner, key, 10, value))


# --- admitted ---------------------------------------------------------------------------


def test_a_writers_records_are_admitted_once_its_certificate_is_known(
    reader: RecordGuard, idents: dict[str, MemberIdentity]
) -> None:
    h1 = idents["h1"]
    inst = {"instance_id": "i1", "node": "h1", "phase": "ready"}
    assert admit(reader, h1, "h1", "inst/i1", inst) == PENDING  # not yet: park it
    learn(reader, h1, "h1")
    assert reader.principal("h1") is not None
    assert admit(reader, h1, "h1", "inst/i1", inst) == ""
    assert admit(reader, h1, "h1", "node", {"node_id": "h1"}) == ""
    assert admit(reader, h1, "h1", "inst/i1", None) == ""  # a withdrawal, signed too
    assert reader.refused == {}
    assert reader.admitted == 4  # the certificate record counts too


def test_suffixed_members_share_their_certificate(
    reader: RecordGuard, idents: dict[str, MemberIdentity]
) -> None:
    e1 = idents["e1"]
    for worker in ("e1#w0", "e1#w1"):
        learn(reader, e1, worker)
        assert admit(reader, e1, worker, "edge/stats", {"apps": {}}) == ""
    assert reader.refused == {}


def test_parked_records_are_bounded(reader: RecordGuard) -> None:
    for i in range(MAX_PARKED_PER_OWNER + 3):
        reader.park("h1", i)
    assert reader.refused[PENDING] == 3  # the overflow is counted, not kept
    assert reader.unpark("h1") == list(range(MAX_PARKED_PER_OWNER))
    assert reader.unpark("h1") == []


# --- refused, by reason -----------------------------------------------------------------


def _forged(
    idents: dict[str, MemberIdentity], case: str
) -> tuple[str, str, int, Any, str, str]:  # owner, key, version, value, sig, reason
    h1, h2, r1, r2 = idents["h1"], idents["h2"], idents["r1"], idents["r2"]
    intents = {"node": "h2", "epoch": 1, "instances": []}
    inst = {"instance_id": "i1", "node": "h1"}
    cases: dict[str, tuple[str, str, int, Any, str, str]] = {
        "unsigned": ("h1", "inst/i1", 10, inst, "", "unsigned"),
        "not base64": ("h1", "inst/i1", 10, inst, "!!!*", "bad-signature"),
        "another key": ("h1", "inst/i1", 10, inst, sign(h2, "h1", "inst/i1", 10, inst),
                        "bad-signature"),
        "another value": ("h1", "inst/i1", 10, inst | {"phase": "ready"},
                          sign(h1, "h1", "inst/i1", 10, inst), "bad-signature"),
        "another version": ("h1", "inst/i1", 11, inst, sign(h1, "h1", "inst/i1", 10, inst),
                            "bad-signature"),
        "another key name": ("h1", "inst/i2", 10, inst, sign(h1, "h1", "inst/i1", 10, inst),
                             "bad-signature"),
        "another cluster": ("h1", "inst/i1", 10, inst,
                            b64(h1.key.sign(record_message("other", "h1", "inst/i1", 10, inst))),
                            "bad-signature"),
        # h1's genuine record, replayed under a sibling member name h1 may also use
        "another owner": ("h1#x", "inst/i1", 10, inst, sign(h1, "h1", "inst/i1", 10, inst),
                          "bad-signature"),
        "agent writes intents": ("h1", "intents/h2", 10, intents,
                                 sign(h1, "h1", "intents/h2", 10, intents), "unauthorized"),
        "agent writes lease": ("h1", "lease", 10, {"holder": "h1"},
                               sign(h1, "h1", "lease", 10, {"holder": "h1"}), "unauthorized"),
        "node for another": ("h1", "node", 10, {"node_id": "h2"},
                             sign(h1, "h1", "node", 10, {"node_id": "h2"}), "unauthorized"),
        "instance of another": ("h1", "inst/x", 10, {"node": "h2"},
                                sign(h1, "h1", "inst/x", 10, {"node": "h2"}), "unauthorized"),
        "reconciler writes an instance": ("r2", "inst/x", 10, {"node": "r2"},
                                          sign(r2, "r2", "inst/x", 10, {"node": "r2"}),
                                          "unauthorized"),
        "reconciler writes edge stats": ("r2", "edge/stats", 10, {},
                                         sign(r2, "r2", "edge/stats", 10, {}), "unauthorized"),
        "own records as another owner": ("h2", "inst/i1", 10, inst,
                                         sign(h1, "h2", "inst/i1", 10, inst), "bad-signature"),
        "unknown key": ("r2", "bench/key", 10, 1, sign(r2, "r2", "bench/key", 10, 1),
                        "unauthorized"),
        "the reader's own name": ("r1", "lease", 10, {"holder": "h1"},
                                  sign(h1, "r1", "lease", 10, {"holder": "h1"}),
                                  "bad-signature"),
        "a suffix of the reader": ("r1#evil", "lease", 10, {"holder": "h1"},
                                   sign(h1, "r1#evil", "lease", 10, {"holder": "h1"}),
                                   "bad-signature"),
    }  # fmt: skip
    assert r1 is not None
    return cases[case]


FORGED = [
    "unsigned", "not base64", "another key", "another value", "another version",
    "another key name", "another cluster", "another owner", "agent writes intents",
    "agent writes lease", "node for another", "instance of another",
    "reconciler writes an instance", "reconciler writes edge stats",
    "own records as another owner", "unknown key", "the reader's own name",
    "a suffix of the reader",
]  # fmt: skip


@pytest.mark.parametrize("case", FORGED)
def test_refused_by_reason(
    reader: RecordGuard, idents: dict[str, MemberIdentity], case: str
) -> None:
    for name in ("h1", "h2", "r2"):
        learn(reader, idents[name], name)
    learn(reader, idents["h1"], "h1#x")
    owner, key, version, value, sig, why = _forged(idents, case)
    assert reader.admit(owner, key, version, value, sig) == why
    assert reader.refused == {why: 1}


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("somebody else's certificate name", "unauthorized"),
        ("a certificate under another owner", "unauthorized"),
        ("an operator's certificate", "unauthorized"),
        ("a withdrawn certificate", "unauthorized"),
        ("no chain", "bad-certificate"),
        ("junk chain", "bad-certificate"),
        ("another CA", "wrong-ca"),
        ("expired", "expired"),
        ("not yet valid", "not-yet-valid"),
    ],
)
def test_certificate_records_refused(
    pki: Pki, reader: RecordGuard, idents: dict[str, MemberIdentity], case: str, why: str
) -> None:
    h1 = idents["h1"]
    owner, key = "h1", "certs/h1"
    value: dict[str, Any] | None = cert(h1)
    signer = h1
    if case == "somebody else's certificate name":
        key = "certs/h2"
    elif case == "a certificate under another owner":
        owner = "h2"
    elif case == "an operator's certificate":
        signer = idents["ann"]
        owner, key, value = "ann", "certs/ann", cert(signer)
    elif case == "a withdrawn certificate":
        value = None
    elif case == "no chain":
        value = {"pem": h1.chain_pem()}
    elif case == "junk chain":
        value = {"chain": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}
    elif case == "another CA":
        signer = Pki.create("prod", now=NOW).member("agent", "h1", now=NOW)
        value = cert(signer)
    elif case == "expired":
        signer = pki.member("agent", "h1", now=NOW - 2 * DAY)
        value = cert(signer)
    elif case == "not yet valid":
        signer = pki.member("agent", "h1", now=NOW + 3600)
        value = cert(signer)
    sig = sign(signer, owner, key, 3, value)
    assert reader.admit(owner, key, 3, value, sig) == why
    assert reader.refused == {why: 1}
    assert reader.principal(owner) is None


def test_a_known_certificate_still_expires(
    reader: RecordGuard, idents: dict[str, MemberIdentity], clock: Clock
) -> None:
    h1 = idents["h1"]
    learn(reader, h1, "h1")
    assert admit(reader, h1, "h1", "node", {"node_id": "h1"}) == ""
    clock.t = NOW + DAY + 1
    assert admit(reader, h1, "h1", "node", {"node_id": "h1"}) == "expired"


# --- own records ------------------------------------------------------------------------


def test_own_echo_is_checked_against_our_own_certificate(
    reader: RecordGuard, idents: dict[str, MemberIdentity]
) -> None:
    mine = {"holder": "r1", "epoch": 3}
    assert reader.admit("r1", "lease", 7, mine, reader.sign("r1", "lease", 7, mine)) == ""
    assert reader.admit("r1#4711", "lease", 7, mine, reader.sign("r1#4711", "lease", 7, mine)) == ""
    forged = sign(idents["h1"], "r1", "lease", 1 << 62, mine)
    assert reader.admit("r1", "lease", 1 << 62, mine, forged) == "bad-signature"


def test_a_renewed_certificate_signs_from_then_on(
    pki: Pki, idents: dict[str, MemberIdentity], clock: Clock
) -> None:
    writer = pki.guard(idents["h1"], wall=clock)
    reader = pki.guard(idents["r1"], wall=clock)
    k, v = writer.cert_record()
    assert reader.admit("h1", k, 1, v, writer.sign("h1", k, 1, v)) == ""
    reader.applied("h1", k, 1, v)
    clock.t = NOW + 0.6 * DAY
    renewed = pki.member("agent", "h1", now=clock.t)
    writer.set_identity(renewed)
    node = {"node_id": "h1"}
    # Signed with the new key: refused until the new certificate record arrives.
    assert reader.admit("h1", "node", 5, node, writer.sign("h1", "node", 5, node)) == (
        "bad-signature"
    )
    k, v = writer.cert_record()
    assert reader.admit("h1", k, 4, v, writer.sign("h1", k, 4, v)) == ""
    reader.applied("h1", k, 4, v)
    assert reader.admit("h1", "node", 5, node, writer.sign("h1", "node", 5, node)) == ""
    # An older certificate record stored late does not replace the newer one.
    old = {"chain": idents["h1"].chain_pem()}
    reader.applied("h1", k, 2, old)
    assert reader.admit("h1", "node", 6, node, writer.sign("h1", "node", 6, node)) == ""


def test_live_identity_renewal_swaps_everything(pki: Pki, tmp_path: Path) -> None:
    now = time.time()
    d = MemberDir(tmp_path / "identity")
    d.save(pki.member("agent", "h1", now=now - 3600))
    live = LiveIdentity(d, CLUSTER)
    calls: list[str] = []
    live.on_renewed(lambda: calls.append("renewed"))
    with pytest.raises(ValueError, match="keeps the member's name"):
        live.renewed(pki.member("agent", "h2", now=now))
    renewed = pki.member("agent", "h1", now=now)
    live.renewed(renewed)
    assert calls == ["renewed"]
    assert live.guard.me is renewed
    assert d.load().chain[0] == renewed.chain[0]  # on disk too
    assert live.principal.not_before == int(now) - 60  # certificates hold whole seconds
    k, v = live.guard.cert_record()
    assert v == {"chain": renewed.chain_pem()}
    sig = live.guard.sign("h1", "node", 1, {"node_id": "h1"})
    renewed.key.public_key().verify(
        unb64(sig), record_message(CLUSTER, "h1", "node", 1, {"node_id": "h1"})
    )


# --- revocation -------------------------------------------------------------------------


def test_revocation_hides_refuses_and_a_new_certificate_readmits(
    pki: Pki, reader: RecordGuard, idents: dict[str, MemberIdentity], clock: Clock
) -> None:
    h1, h2, r2 = idents["h1"], idents["h2"], idents["r2"]
    for ident, owner in ((h1, "h1"), (h1, "h1#w0"), (h2, "h2"), (r2, "r2")):
        learn(reader, ident, owner)
    value = pki.revocation([{"name": "h1", "before": NOW + 10}])
    clock.t = NOW + 20
    assert admit(reader, r2, "r2", "revocations", value) == ""
    assert sorted(reader.applied("r2", "revocations", 10, value)) == ["h1", "h1#w0"]
    assert reader.blocked("h1")
    assert reader.blocked("h1#w0")
    assert not reader.blocked("h2")
    assert admit(reader, h1, "h1", "node", {"node_id": "h1"}) == "revoked"
    assert admit(reader, h2, "h2", "node", {"node_id": "h2"}) == ""
    # The same list again changes nothing; a certificate issued later is valid again.
    assert reader.applied("r2", "revocations", 11, value) == []
    fresh = pki.member("agent", "h1", now=NOW + 100)
    clock.t = NOW + 200
    learn(reader, fresh, "h1", version=50)
    assert not reader.blocked("h1")
    assert admit(reader, fresh, "h1", "node", {"node_id": "h1"}) == ""
    assert reader.blocked("h1#w0")  # still on the revoked certificate


def test_a_revocation_already_known_still_hides(
    pki: Pki, reader: RecordGuard, idents: dict[str, MemberIdentity], clock: Clock
) -> None:
    """The reconciler that revokes adds the name to its verifier before the record is
    published: the record must still hide the revoked member's records there."""
    learn(reader, idents["h1"], "h1")
    clock.t = NOW + 20
    reader.verifier.revocations.add("h1", NOW + 10)
    value = pki.revocation([{"name": "h1", "before": NOW + 10}])
    assert reader.applied("r1", "revocations", 10, value) == ["h1"]  # our own record
    assert reader.blocked("h1")


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("signed by an agent", "bad-signature"),
        ("signed by another issuing CA", "wrong-ca"),
        ("list changed after signing", "bad-signature"),
        ("not a list", "malformed"),
        ("no issuer", "malformed"),
        ("entry without a name", "malformed"),
        ("entry without a time", "malformed"),
        ("written by an agent", "unauthorized"),
    ],
)
def test_bad_revocation_lists_are_refused(
    pki: Pki, reader: RecordGuard, idents: dict[str, MemberIdentity], case: str, why: str
) -> None:
    r2, h1 = idents["r2"], idents["h1"]
    learn(reader, r2, "r2")
    learn(reader, h1, "h1")
    entries: list[dict[str, Any]] = [{"name": "h2", "before": NOW}]
    value: dict[str, Any] = pki.revocation(entries)
    writer, owner = r2, "r2"
    if case == "signed by an agent":
        value["sig"] = b64(h1.key.sign(canonical(entries)))
    elif case == "signed by another issuing CA":
        value = Pki.create("prod", now=NOW).revocation(entries)
    elif case == "list changed after signing":
        value["list"] = [{"name": "h1", "before": NOW}]
    elif case == "not a list":
        value["list"] = {"name": "h2"}
    elif case == "no issuer":
        del value["issuer"]
    elif case == "entry without a name":
        value = pki.revocation([{"before": NOW}])
    elif case == "entry without a time":
        value = pki.revocation([{"name": "h2", "before": "yesterday"}])
    elif case == "written by an agent":
        writer, owner = h1, "h1"
    assert admit(reader, writer, owner, "revocations", value) == why
    assert reader.verifier.revocations.by_name == {}


def test_forget_drops_what_was_learnt_of_a_member(
    reader: RecordGuard, idents: dict[str, MemberIdentity]
) -> None:
    learn(reader, idents["h1"], "h1")
    reader.park("h1", "x")
    reader.forget("h1")
    assert reader.principal("h1") is None
    assert reader.unpark("h1") == []
    assert admit(reader, idents["h1"], "h1", "node", {"node_id": "h1"}) == PENDING


# --- nothing a peer sends makes it raise ------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    owner=st.sampled_from(["h1", "h1#x", "r1", "r1#1", "zz", ""]),
    key=st.sampled_from(["node", "certs/h1", "certs/zz", "revocations", "inst/a", "lease", "x"]),
    version=st.integers(min_value=0, max_value=2**63),
    value=json_values,
    sig=st.text(max_size=100) | st.just("A" * 86),
)
def test_admit_never_raises(
    pki: Pki, idents: dict[str, MemberIdentity], owner: str, key: str, version: int,
    value: Any, sig: str,
) -> None:  # fmt: skip
    reader = pki.guard(idents["r1"], wall=lambda: NOW)
    learn(reader, idents["h1"], "h1")
    why = reader.admit(owner, key, version, value, sig)
    assert why != ""  # nobody signed any of it
    assert isinstance(why, str)
