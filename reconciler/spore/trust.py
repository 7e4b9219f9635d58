"""Trust: which signing keys are accepted for which app names (docs/spore.md).

A spore is accepted only if its signer is trusted *for its app name*, never merely because
it carries a key. A trust source is either

* a public key PEM file: that key is trusted for every app name (``*``), or
* a trust policy file (YAML, documented in docs/spore.md)::

      apiVersion: myco/v1
      kind: TrustPolicy
      keys:
        - name: release              # a label, shown as the signer
          key: keys/release.pub      # a PEM file, relative to this policy file
          apps: ["billing", "front*"]
        - name: ci
          public_key: |              # or the PEM inline
            -----BEGIN PUBLIC KEY-----
            ...
            -----END PUBLIC KEY-----
          apps: ["*"]

``apps`` holds case-sensitive shell-style patterns (:func:`fnmatch.fnmatchcase`). Several
sources are merged: a key is trusted for the union of its patterns.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError, KeyFileError
from reconciler.spore.keys import fingerprint, parse_public_key, raw_public_bytes

MAX_POLICY_FILE = 1024 * 1024
_PEM_MARK = b"-----BEGIN PUBLIC KEY-----"
_ENTRY_FIELDS = {"name", "key", "public_key", "apps"}


@dataclass(frozen=True)
class TrustEntry:
    public_key: bytes  # the 32 raw Ed25519 bytes
    patterns: tuple[str, ...]
    label: str

    def matches(self, app_name: str) -> bool:
        return any(fnmatch.fnmatchcase(app_name, p) for p in self.patterns)


@dataclass(frozen=True)
class TrustPolicy:
    entries: tuple[TrustEntry, ...] = ()

    @classmethod
    def load(cls, paths: Sequence[Path]) -> TrustPolicy:
        """Merge PEM key files and policy files into one policy; raise :class:`ConfigError`."""
        entries: list[TrustEntry] = []
        for path in paths:
            entries.extend(_load_one(Path(path)))
        return cls(tuple(entries))

    @classmethod
    def for_keys(cls, *raw_keys: bytes, patterns: tuple[str, ...] = ("*",)) -> TrustPolicy:
        """A policy trusting these raw public keys for ``patterns`` (tests, dev identities)."""
        return cls(tuple(TrustEntry(k, patterns, fingerprint(k)) for k in raw_keys))

    def knows(self, public_key: bytes) -> bool:
        """Whether the key is trusted for at least one app name."""
        return any(e.public_key == public_key for e in self.entries)

    def allows(self, public_key: bytes, app_name: str) -> bool:
        """Whether a spore of ``app_name`` signed by ``public_key`` is acceptable."""
        return any(e.public_key == public_key and e.matches(app_name) for e in self.entries)

    def label(self, public_key: bytes) -> str:
        """The policy's name for a key, or its fingerprint."""
        for e in self.entries:
            if e.public_key == public_key:
                return e.label
        return fingerprint(public_key)


def _load_one(path: Path) -> list[TrustEntry]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read trust file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_POLICY_FILE:
        raise ConfigError(f"trust file {path} is over {MAX_POLICY_FILE} bytes")
    if data.lstrip().startswith(_PEM_MARK):
        key = parse_public_key(data, str(path))
        return [TrustEntry(raw_public_bytes(key), ("*",), path.stem)]
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"trust file {path}: neither a PEM public key nor YAML") from exc
    return _parse_policy(doc, path)


def _parse_policy(doc: Any, path: Path) -> list[TrustEntry]:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"trust policy {path}: {msg}")

    if not isinstance(doc, dict):
        raise bad("expected a mapping with apiVersion, kind and keys")
    if doc.get("apiVersion") != "myco/v1" or doc.get("kind") != "TrustPolicy":
        raise bad("expected apiVersion: myco/v1 and kind: TrustPolicy")
    unknown = set(doc) - {"apiVersion", "kind", "keys"}
    if unknown:
        raise bad(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        raise bad("'keys' must be a non-empty list")
    out: list[TrustEntry] = []
    for i, item in enumerate(keys):
        where = f"keys[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where}: expected a mapping")
        unknown = set(item) - _ENTRY_FIELDS
        if unknown:
            raise bad(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        apps = item.get("apps")
        if (
            not isinstance(apps, list)
            or not apps
            or not all(isinstance(a, str) and a for a in apps)
        ):
            raise bad(f"{where}: 'apps' must be a non-empty list of name patterns")
        if ("key" in item) == ("public_key" in item):
            raise bad(f"{where}: give exactly one of 'key' (a PEM file) or 'public_key'")
        try:
            if "key" in item:
                if not isinstance(item["key"], str):
                    raise bad(f"{where}: 'key' must be a path")
                pem_path = path.parent / item["key"]
                try:
                    pem = pem_path.read_bytes()
                except OSError as exc:
                    raise bad(f"{where}: cannot read {pem_path}: {exc.strerror}") from exc
                key = parse_public_key(pem, str(pem_path))
            else:
                if not isinstance(item["public_key"], str):
                    raise bad(f"{where}: 'public_key' must be a PEM string")
                key = parse_public_key(item["public_key"].encode(), f"{path} {where}")
        except KeyFileError as exc:
            raise bad(f"{where}: {exc}") from exc
        raw = raw_public_bytes(key)
        label = item.get("name")
        if label is not None and not isinstance(label, str):
            raise bad(f"{where}: 'name' must be a string")
        out.append(TrustEntry(raw, tuple(apps), label or fingerprint(raw)))
    return out
