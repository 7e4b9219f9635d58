"""The signed manifest of a spore (``manifest.json``, docs/spore.md, docs/INTERFACES.md).

The manifest is the app's DNA (identity, runtime, nutrients, slo, security, health, restart
policy, and the dependency ``build`` when there is one) plus the list of payload files with
their SHA-256, size and mode. It is stored in the archive as its *canonical* JSON (sorted
keys, no spaces, UTF-8) and the Ed25519 signature covers exactly those bytes, so every
payload byte is covered through the hashes.

:meth:`SporeManifest.from_json` is strict: unknown fields, wrong types, unsafe payload
paths, unsorted or duplicate file entries are all refused with :class:`SporeFormatError`.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import SporeFormatError
from reconciler.model import Build, Dna, Health, RestartPolicy, Security, Slo
from reconciler.records import Nutrients

FORMAT = "myco.spore/v1"

MAX_PATH_LEN = 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# The JSON Schema of manifest.json; the single definition the reader checks against.
_NUM = {"type": "number", "minimum": 0}
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "format",
        "name",
        "version",
        "runtime",
        "nutrients",
        "slo",
        "security",
        "health",
        "restart",
        "files",
        "payload",
    ],
    "properties": {
        "format": {"const": FORMAT},
        "name": {"type": "string", "pattern": "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"},
        "version": {"type": "string", "minLength": 1, "maxLength": 128},
        "runtime": {
            "type": "object",
            "additionalProperties": False,
            "required": ["command", "args", "env"],
            "properties": {
                "command": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "args": {"type": "array", "items": {"type": "string"}},
                "env": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "nutrients": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cpu_milli", "memory_mb"],
            "properties": {
                "cpu_milli": {"type": "integer", "minimum": 0},
                "memory_mb": {"type": "integer", "minimum": 0},
            },
        },
        "slo": {
            "type": "object",
            "additionalProperties": False,
            "required": ["p99_budget_ms"],
            "properties": {"p99_budget_ms": {"type": ["integer", "null"], "minimum": 0}},
        },
        "security": {
            "type": "object",
            "additionalProperties": False,
            "required": ["read_only_fs", "lsm_profile"],
            "properties": {
                "read_only_fs": {"type": "boolean"},
                "lsm_profile": {"type": "string"},
            },
        },
        "health": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path", "interval_s", "timeout_s", "grace_s"],
            "properties": {
                "path": {"type": "string", "pattern": "^/"},
                "interval_s": _NUM,
                "timeout_s": _NUM,
                "grace_s": _NUM,
            },
        },
        "restart": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "policy",
                "backoff_initial_s",
                "backoff_max_s",
                "max_failures",
                "window_s",
                "stop_grace_s",
            ],
            "properties": {
                "policy": {"enum": ["always", "on-failure", "never"]},
                "backoff_initial_s": _NUM,
                "backoff_max_s": _NUM,
                "max_failures": {"type": "integer", "minimum": 0},
                "window_s": _NUM,
                "stop_grace_s": _NUM,
            },
        },
        "build": {
            # optional: only a spore with a dependency build carries it (docs/spore.md)
            "type": "object",
            "additionalProperties": False,
            "required": ["kind", "requirements", "lockfile", "command", "outputs", "platform"],
            "properties": {
                "kind": {"enum": ["python", "node", "command"]},
                "requirements": {"type": "string"},
                "lockfile": {"type": "string"},
                "command": {"type": "array", "items": {"type": "string"}},
                "outputs": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string", "minLength": 1, "maxLength": 128},
            },
        },
        "payload": {
            "type": "object",
            "additionalProperties": False,
            "required": ["sha256", "size"],
            "properties": {
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "size": {"type": "integer", "minimum": 0},
            },
        },
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "sha256", "size", "mode"],
                "properties": {
                    "path": {"type": "string", "minLength": 1, "maxLength": MAX_PATH_LEN},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "size": {"type": "integer", "minimum": 0},
                    "mode": {"type": "integer", "minimum": 0, "maximum": 0o777},
                },
            },
        },
    },
}
# Imported by name so that the package type-checks whether or not jsonschema's stubs
# (types-jsonschema, not a dependency) are installed.
_jsonschema: Any = importlib.import_module("jsonschema")
_VALIDATOR = _jsonschema.Draft202012Validator(MANIFEST_SCHEMA)


def check_payload_path(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path of a payload file, else raise.

    Refused: empty, absolute, backslashes, NUL or control characters, ``.``/``..``/empty
    components (so also a trailing ``/``), and over-long paths.
    """
    if not path or len(path) > MAX_PATH_LEN:
        raise SporeFormatError(f"payload path {path!r}: empty or too long")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise SporeFormatError(f"payload path {path!r}: absolute paths are refused")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise SporeFormatError(f"payload path {path!r}: control characters are refused")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise SporeFormatError(f"payload path {path!r}: '..', '.' and empty parts are refused")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One payload file: its path under ``payload/``, SHA-256 (hex), size and mode bits."""

    path: str
    sha256: str
    size: int
    mode: int = 0o644

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "mode": self.mode}


@dataclass(frozen=True)
class PayloadDigest:
    """SHA-256 of the archive's first ``size`` bytes: all payload entries (local headers and
    data), which come first in a spore. Lets a verifier check every payload byte in the
    same single pass that computes the spore's digest; the per-file hashes are checked
    again when the files are extracted."""

    sha256: str
    size: int


@dataclass(frozen=True)
class SporeManifest:
    """The signed DNA of a spore. Build it with :meth:`from_dna`, read it with :meth:`from_json`."""

    name: str
    version: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    nutrients: Nutrients = field(default_factory=lambda: Nutrients(100, 64))
    slo: Slo = field(default_factory=Slo)
    security: Security = field(default_factory=Security)
    health: Health = field(default_factory=Health)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    files: tuple[FileEntry, ...] = ()
    payload: PayloadDigest | None = None  # set by the builder once the payload is written
    format: str = FORMAT
    #: the dependency build whose output is in the payload; ``platform`` is "any" or the
    #: builder host's tag (agents run only what their host matches)
    build: Build | None = None

    @classmethod
    def from_dna(cls, dna: Dna, files: Iterable[FileEntry]) -> SporeManifest:
        """The manifest of ``dna`` with these payload files (sorted by path here)."""
        entries = tuple(sorted(files, key=lambda f: f.path))
        _check_files(entries)
        return cls(
            name=dna.name,
            version=dna.version,
            command=tuple(dna.command),
            args=tuple(dna.args),
            env=tuple(sorted(dna.env)),
            nutrients=dna.nutrients,
            slo=dna.slo,
            security=dna.security,
            health=dna.health,
            restart=dna.restart,
            files=entries,
            build=dna.build,
        )

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def payload_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        h, r = self.health, self.restart
        out: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "runtime": {
                "command": list(self.command),
                "args": list(self.args),
                "env": dict(self.env),
            },
            "nutrients": {
                "cpu_milli": self.nutrients.cpu_milli,
                "memory_mb": self.nutrients.memory_mb,
            },
            "slo": {"p99_budget_ms": self.slo.p99_budget_ms},
            "security": {
                "read_only_fs": self.security.read_only_fs,
                "lsm_profile": self.security.lsm_profile,
            },
            "health": {
                "path": h.path,
                "interval_s": float(h.interval_s),
                "timeout_s": float(h.timeout_s),
                "grace_s": float(h.grace_s),
            },
            "restart": {
                "policy": r.policy,
                "backoff_initial_s": float(r.backoff_initial_s),
                "backoff_max_s": float(r.backoff_max_s),
                "max_failures": r.max_failures,
                "window_s": float(r.window_s),
                "stop_grace_s": float(r.stop_grace_s),
            },
            "files": [f.to_json() for f in self.files],
        }
        if self.build is not None:
            b = self.build
            out["build"] = {
                "kind": b.kind,
                "requirements": b.requirements,
                "lockfile": b.lockfile,
                "command": list(b.command),
                "outputs": list(b.outputs),
                "platform": b.platform,
            }
        if self.payload is not None:
            out["payload"] = {"sha256": self.payload.sha256, "size": self.payload.size}
        return out

    def canonical_bytes(self) -> bytes:
        """The exact bytes stored as ``manifest.json`` and covered by the signature."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, data: object) -> SporeManifest:
        """Parse a decoded manifest object strictly; raise :class:`SporeFormatError`."""
        error = _jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            raise SporeFormatError(f"manifest.json: {where}: {error.message}")
        assert isinstance(data, dict)
        rt, h, r = data["runtime"], data["health"], data["restart"]
        files = tuple(
            FileEntry(f["path"], f["sha256"], f["size"], f["mode"]) for f in data["files"]
        )
        _check_files(files)
        if [f.path for f in files] != sorted(f.path for f in files):
            raise SporeFormatError("manifest.json: files are not sorted by path")
        return cls(
            name=data["name"],
            version=data["version"],
            command=tuple(rt["command"]),
            args=tuple(rt["args"]),
            env=tuple(sorted(rt["env"].items())),
            nutrients=Nutrients(data["nutrients"]["cpu_milli"], data["nutrients"]["memory_mb"]),
            slo=Slo(data["slo"]["p99_budget_ms"]),
            security=Security(data["security"]["read_only_fs"], data["security"]["lsm_profile"]),
            health=Health(h["path"], h["interval_s"], h["timeout_s"], h["grace_s"]),
            restart=RestartPolicy(
                r["policy"],
                r["backoff_initial_s"],
                r["backoff_max_s"],
                r["max_failures"],
                r["window_s"],
                r["stop_grace_s"],
            ),
            files=files,
            payload=PayloadDigest(data["payload"]["sha256"], data["payload"]["size"]),
            format=data["format"],
            build=_build_from(data.get("build")),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SporeManifest:
        """Parse ``manifest.json`` bytes; they must be canonical JSON with no duplicate keys."""
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SporeFormatError(f"manifest.json is not valid JSON: {exc}") from exc
        manifest = cls.from_json(data)
        if canonical_json(data) != raw:
            raise SporeFormatError("manifest.json is not in canonical form")
        return manifest


def _build_from(b: dict[str, Any] | None) -> Build | None:
    if b is None:
        return None
    return Build(
        kind=b["kind"],
        requirements=b["requirements"],
        lockfile=b["lockfile"],
        command=tuple(b["command"]),
        outputs=tuple(b["outputs"]),
        platform=b["platform"],
    )


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one serialisation that is signed and hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_files(files: tuple[FileEntry, ...]) -> None:
    """Paths safe and unique; no file is also used as a directory of another."""
    seen: set[str] = set()
    for f in files:
        check_payload_path(f.path)
        if not _SHA256_HEX.match(f.sha256):
            raise SporeFormatError(f"payload file {f.path!r}: malformed sha256")
        if f.path in seen:
            raise SporeFormatError(f"payload file {f.path!r} is listed twice")
        seen.add(f.path)
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise SporeFormatError(f"payload file {f.path!r} lies under another file")
