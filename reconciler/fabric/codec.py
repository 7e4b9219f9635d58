"""Wire messages and their compact JSON framing; a decoder that trusts nothing.

A packet (after decryption) is a JSON array of messages; each message is a JSON array
whose first item is its type code and whose other items are positional fields. Decoding
checks every type and bound and raises only :class:`~reconciler.errors.PacketError`.

The messages are values: never mutate one (they are shared, e.g. a queued broadcast goes
out many times). They are not ``frozen`` dataclasses only because a frozen ``__init__``
costs a ``object.__setattr__`` call per field, and the simulator builds millions of them;
``unsafe_hash`` keeps them hashable as frozen ones were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, NamedTuple, TypeAlias

from reconciler.errors import PacketError

from .api import JSONValue

MAX_NAME = 256
MAX_KEY = 1024
MAX_INT = (1 << 63) - 1

# Member states on the wire.
ALIVE, SUSPECT, DEAD, LEFT = 0, 1, 2, 3
STATE_NAMES = ("alive", "suspect", "dead", "left")


@dataclass(slots=True, unsafe_hash=True)
class Ping:
    seq: int
    target: str
    src: str
    src_addr: str


@dataclass(slots=True, unsafe_hash=True)
class PingReq:
    seq: int
    target: str
    target_addr: str
    src: str
    src_addr: str
    nack: bool


@dataclass(slots=True, unsafe_hash=True)
class Ack:
    seq: int


@dataclass(slots=True, unsafe_hash=True)
class Nack:
    seq: int


@dataclass(slots=True, unsafe_hash=True)
class Alive:
    name: str
    addr: str
    inc: int


@dataclass(slots=True, unsafe_hash=True)
class Suspect:
    name: str
    inc: int
    src: str


@dataclass(slots=True, unsafe_hash=True)
class Dead:
    name: str
    inc: int
    src: str  # == name: a graceful leave


@dataclass(slots=True, unsafe_hash=True)
class Entry:
    """One versioned key of one owner; ``deleted`` makes it a tombstone."""

    owner: str
    key: str
    version: int
    deleted: bool
    value: JSONValue
    sig: str = ""  # the writer's signature (docs/identity.md); "" in a mesh without one


@dataclass(slots=True, unsafe_hash=True)
class Digest:
    """Scuttlebutt digest: owner -> highest version known without gaps.

    ``partial``: only the owners listed are compared (a sample, in large clusters); else
    an owner missing from the digest is one the sender has nothing of.
    """

    src: str
    src_addr: str
    reply: bool
    versions: dict[str, int]
    partial: bool = False


@dataclass(slots=True, unsafe_hash=True)
class Deltas:
    """Entries newer than a digest, oldest first per owner, and the sender's watermarks."""

    watermarks: dict[str, int]
    entries: tuple[Entry, ...]


class MemberRow(NamedTuple):
    """One member in a push-pull (a named tuple: a push-pull carries the whole list)."""

    name: str
    addr: str
    inc: int
    state: int


@dataclass(slots=True, unsafe_hash=True)
class PushPull:
    """Full membership and state sync over the stream transport (join, periodic, rejoin)."""

    nonce: int
    join: bool
    reply: bool
    src: str
    src_addr: str
    members: tuple[MemberRow, ...]
    digest: dict[str, int]
    deltas: Deltas


Message: TypeAlias = (
    Ping | PingReq | Ack | Nack | Alive | Suspect | Dead | Entry | Digest | Deltas | PushPull
)

T_PING, T_PINGREQ, T_ACK, T_NACK, T_ALIVE, T_SUSPECT, T_DEAD = 1, 2, 3, 4, 5, 6, 7
T_ENTRY, T_DIGEST, T_DELTAS, T_PUSHPULL = 8, 9, 10, 11


def _entry_list(e: Entry) -> list[Any]:
    if e.sig:
        return [e.owner, e.key, e.version, 1 if e.deleted else 0, e.value, e.sig]
    return [e.owner, e.key, e.version, 1 if e.deleted else 0, e.value]


def to_wire(msg: Message) -> list[Any]:
    """The JSON-able form of one message."""
    if isinstance(msg, Ping):
        return [T_PING, msg.seq, msg.target, msg.src, msg.src_addr]
    if isinstance(msg, PingReq):
        n = 1 if msg.nack else 0
        return [T_PINGREQ, msg.seq, msg.target, msg.target_addr, msg.src, msg.src_addr, n]
    if isinstance(msg, Ack):
        return [T_ACK, msg.seq]
    if isinstance(msg, Nack):
        return [T_NACK, msg.seq]
    if isinstance(msg, Alive):
        return [T_ALIVE, msg.name, msg.addr, msg.inc]
    if isinstance(msg, Suspect):
        return [T_SUSPECT, msg.name, msg.inc, msg.src]
    if isinstance(msg, Dead):
        return [T_DEAD, msg.name, msg.inc, msg.src]
    if isinstance(msg, Entry):
        return [T_ENTRY, *_entry_list(msg)]
    if isinstance(msg, Digest):
        flags = (1 if msg.reply else 0) | (2 if msg.partial else 0)
        return [T_DIGEST, msg.src, msg.src_addr, flags, msg.versions]
    if isinstance(msg, Deltas):
        return [T_DELTAS, msg.watermarks, [_entry_list(e) for e in msg.entries]]
    return [
        T_PUSHPULL,
        msg.nonce,
        1 if msg.join else 0,
        1 if msg.reply else 0,
        msg.src,
        msg.src_addr,
        msg.members,  # tuples of (name, addr, inc, state): encoded as arrays
        msg.digest,
        msg.deltas.watermarks,
        [_entry_list(e) for e in msg.deltas.entries],
    ]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder built once (``JSONEncoder.encode`` builds one per call): same output.
# Without a circular-reference check (markers=None), which the values never need; a
# circular value still fails, as RecursionError turned into the same ValueError.
_C_ENCODE = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False
    )
)


def dumps(obj: object) -> bytes:
    if _C_ENCODE is None:  # pragma: no cover - CPython always has the C encoder
        return _ENCODER.encode(obj).encode()
    try:
        return "".join(_C_ENCODE(obj, 0)).encode()
    except RecursionError as exc:
        raise ValueError("Circular reference detected") from exc


def encode_one(msg: Message) -> bytes:
    """The encoding of one message, as it appears inside a packet."""
    if _C_ENCODE is None:  # pragma: no cover
        return dumps(to_wire(msg))
    try:  # dumps, inlined: one call less per message sent
        return "".join(_C_ENCODE(to_wire(msg), 0)).encode()
    except RecursionError as exc:
        raise ValueError("Circular reference detected") from exc


def join(parts: list[bytes]) -> bytes:
    """A packet of already encoded messages: the same bytes as :func:`encode`."""
    return b"[" + b",".join(parts) + b"]"


def encode(messages: list[Message]) -> bytes:
    return join([dumps(to_wire(m)) for m in messages])


def wire_size(msg: Message) -> int:
    """Bytes the message adds to a packet (its encoding plus a comma)."""
    return len(dumps(to_wire(msg))) + 1


# --- decoding -------------------------------------------------------------------------


def _bad_constant(name: str) -> None:
    raise PacketError(f"non-finite number {name}")


_DECODER = json.JSONDecoder(parse_constant=_bad_constant)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]


def _int(v: object) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:
        raise PacketError("expected a non-negative integer")
    return v


def _str(v: object, limit: int = MAX_NAME) -> str:
    if type(v) is not str or not v or len(v) > limit:
        raise PacketError("expected a non-empty short string")
    return v


def _flag(v: object) -> bool:
    if v not in (0, 1) or type(v) is not int:
        raise PacketError("expected 0 or 1")
    return v == 1


def _versions(v: object) -> dict[str, int]:
    if type(v) is not dict:
        raise PacketError("expected an object of versions")
    return {_str(k): _int(x) for k, x in v.items()}


MAX_SIG = 128


def _entry(v: object) -> Entry:
    if type(v) is not list or len(v) not in (5, 6):
        raise PacketError("bad entry")
    deleted = _flag(v[3])
    sig = _str(v[5], MAX_SIG) if len(v) == 6 else ""
    return Entry(
        _str(v[0]), _str(v[1], MAX_KEY), _int(v[2]), deleted, None if deleted else v[4], sig
    )


def _fields(m: list[Any], n: int) -> None:
    if len(m) != n:
        raise PacketError(f"message type {m[0]} needs {n} items, got {len(m)}")


def _message(m: object) -> Message:
    if type(m) is not list or not m or type(m[0]) is not int:
        raise PacketError("a message is an array starting with its type")
    t = m[0]
    if t == T_ACK and len(m) == 2:  # the commonest message, checked inline
        seq = m[1]
        if type(seq) is int and 0 <= seq <= MAX_INT:
            return Ack(seq)
        raise PacketError("expected a non-negative integer")
    if t == T_PING:
        _fields(m, 5)
        return Ping(_int(m[1]), _str(m[2]), _str(m[3]), _str(m[4]))
    if t == T_PINGREQ:
        _fields(m, 7)
        return PingReq(_int(m[1]), _str(m[2]), _str(m[3]), _str(m[4]), _str(m[5]), _flag(m[6]))
    if t == T_ACK:
        _fields(m, 2)
        return Ack(_int(m[1]))
    if t == T_NACK:
        _fields(m, 2)
        return Nack(_int(m[1]))
    if t == T_ALIVE:
        _fields(m, 4)
        return Alive(_str(m[1]), _str(m[2]), _int(m[3]))
    if t == T_SUSPECT:
        _fields(m, 4)
        return Suspect(_str(m[1]), _int(m[2]), _str(m[3]))
    if t == T_DEAD:
        _fields(m, 4)
        return Dead(_str(m[1]), _int(m[2]), _str(m[3]))
    if t == T_ENTRY:
        return _entry(m[1:])
    if t == T_DIGEST:
        _fields(m, 5)
        flags = _int(m[3])
        if flags > 3:
            raise PacketError("bad digest flags")
        return Digest(_str(m[1]), _str(m[2]), bool(flags & 1), _versions(m[4]), bool(flags & 2))
    if t == T_DELTAS:
        _fields(m, 3)
        return Deltas(_versions(m[1]), _entries(m[2]))
    if t == T_PUSHPULL:
        _fields(m, 10)
        members = _rows(m[6])
        deltas = Deltas(_versions(m[8]), _entries(m[9]))
        return PushPull(
            _int(m[1]), _flag(m[2]), _flag(m[3]), _str(m[4]), _str(m[5]), members,
            _versions(m[7]), deltas,
        )  # fmt: skip
    raise PacketError(f"unknown message type {t}")


def _entries(v: object) -> tuple[Entry, ...]:
    if type(v) is not list:
        raise PacketError("bad entry list")
    return tuple(_entry(e) for e in v)


def _rows(v: object) -> tuple[MemberRow, ...]:
    """A push-pull's member list: the checks of ``_str``/``_int`` inlined (1000s of rows)."""
    if type(v) is not list:
        raise PacketError("bad member list")
    out: list[MemberRow] = []
    new = _new_row
    for r in v:
        if type(r) is not list or len(r) != 4:
            raise PacketError("bad member row")
        name, addr, inc, state = r
        if type(name) is not str or not 0 < len(name) <= MAX_NAME:
            raise PacketError("expected a non-empty short string")
        if type(addr) is not str or not 0 < len(addr) <= MAX_NAME:
            raise PacketError("expected a non-empty short string")
        if type(inc) is not int or not 0 <= inc <= MAX_INT:
            raise PacketError("expected a non-negative integer")
        if type(state) is not int or not 0 <= state <= LEFT:
            raise PacketError("bad member state")
        out.append(new(MemberRow, r))
    return tuple(out)


_new_row = tuple.__new__


def decode(data: bytes) -> list[Message]:
    """Messages of one decrypted packet; raises PacketError and nothing else."""
    try:
        text = data.decode("utf-8")
        if text and text[0] == "[" and text[-1] == "]":
            # What ``JSONDecoder.decode`` does, minus its whitespace skipping (our
            # packets have none; anything else takes the full path below).
            try:
                obj, end = _SCAN(text, 0)
            except StopIteration as exc:
                raise PacketError("undecodable packet: JSONDecodeError") from exc
            if end != len(text):
                raise PacketError("undecodable packet: extra data")
        else:
            obj = _DECODER.decode(text)
    except PacketError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError, TypeError) as exc:
        raise PacketError(f"undecodable packet: {type(exc).__name__}") from exc
    if type(obj) is not list:
        raise PacketError("a packet is an array of messages")
    try:
        return [_message(m) for m in obj]
    except PacketError:
        raise
    except (ValueError, RecursionError, TypeError, AttributeError, IndexError) as exc:
        raise PacketError(f"malformed message: {type(exc).__name__}") from exc
