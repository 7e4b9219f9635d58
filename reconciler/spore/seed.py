"""The seed's flat JSON DNA (``examples/billing.json`` of the Go demo) plus one binary.

Accepted fields: ``kind`` (must be ``Spore`` if present), ``name``, ``version``,
``command`` (a string or a list), ``args``, ``env``, ``provides`` (ignored), ``nutrients``,
``slo``, ``security``, ``health``. The payload is the one file given with ``--binary``,
stored under its base name with mode 0755. A ``command`` that names that file (or is
absent) runs it as ``./<name>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from reconciler.errors import SporeError
from reconciler.model import Dna, Health, Security, Slo
from reconciler.records import Nutrients
from reconciler.spore.build import SourceFile
from reconciler.spore.manifest import check_payload_path

MAX_SEED_FILE = 1 << 20
_FIELDS = {
    "kind",
    "name",
    "version",
    "command",
    "args",
    "env",
    "provides",
    "nutrients",
    "slo",
    "security",
    "health",
}
_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def dna_from_seed_json(manifest: Path, binary: Path) -> tuple[Dna, list[SourceFile]]:
    """Read a seed DNA file; return the Dna and the one payload file (the binary)."""
    manifest, binary = Path(manifest), Path(binary)
    try:
        raw = manifest.read_bytes()[: MAX_SEED_FILE + 1]
        data: Any = json.loads(raw)
    except OSError as exc:
        raise SporeError(f"cannot read {manifest}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise SporeError(f"{manifest}: not valid JSON ({exc})") from exc
    if len(raw) > MAX_SEED_FILE:
        raise SporeError(f"{manifest}: over {MAX_SEED_FILE} bytes")

    def bad(msg: str) -> SporeError:
        return SporeError(f"{manifest}: {msg}")

    if not isinstance(data, dict):
        raise bad("expected a JSON object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    if data.get("kind", "Spore") != "Spore":
        raise bad("kind must be Spore")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad("name must be a DNS label (lowercase letters, digits, '-')")
    if not isinstance(version, str) or not version:
        raise bad("version must be a non-empty string")
    if not binary.is_file():
        raise SporeError(f"binary {binary} is not a file")
    base = check_payload_path(binary.name)
    command = _command(data.get("command"), base, bad)
    args = data.get("args", [])
    env = data.get("env", {})
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise bad("args must be a list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and _ENV_KEY.match(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise bad("env must map variable names to strings")
    try:
        nutrients = Nutrients(**data.get("nutrients", {"cpu_milli": 100, "memory_mb": 64}))
        slo = Slo(**data.get("slo", {}))
        security = Security(**data.get("security", {}))
        health = Health(**data.get("health", {}))
    except TypeError as exc:
        raise bad(f"unexpected field: {exc}") from exc
    dna = Dna(
        name=name,
        version=version,
        source=binary.resolve().parent,
        command=command,
        args=tuple(args),
        env=tuple(sorted(env.items())),
        nutrients=nutrients,
        slo=slo,
        security=security,
        health=health,
    )
    return dna, [SourceFile(base, binary.resolve(), 0o755)]


def _command(value: object, base: str, bad: Any) -> tuple[str, ...]:
    if value is None or value == base:
        return (f"./{base}",)
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise bad("command must be a string or a non-empty list of strings")
