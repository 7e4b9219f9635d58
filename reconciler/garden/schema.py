"""Check one garden document against the JSON Schema in ``schemas/`` and word the errors.

The schema is the single definition of the format (editors and CI use the same file); this
module only turns :class:`jsonschema.ValidationError` into ``path:line:col: message``
problems that point at the offending node: the key for an unknown field, the value for a
bad value, the mapping for a missing field.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import (  # type: ignore[import-untyped,unused-ignore]
    Draft202012Validator,
    ValidationError,
)

from reconciler.garden.loader import Document, Mark, Pointer

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SPORE_SCHEMA = "spore.v1.json"
SPORE_SCHEMA_ID = "https://mycelium-mesh.dev/schemas/v1/spore.json"

#: Names people bring from other tools, mapped to ours (checked before spelling distance).
SYNONYMS = {
    "replicas": "instances",
    "replica": "instances",
    "count": "instances",
    "scale": "instances",
    "image": "source",
    "path": "source",
    "cmd": "command",
    "entrypoint": "command",
    "arguments": "args",
    "environment": "env",
    "resources": "nutrients",
    "limits": "nutrients",
    "cpu": "cpu_milli",
    "memory": "memory_mb",
    "mem": "memory_mb",
    "healthcheck": "health",
    "readiness": "health",
    "dependsOn": "depends_on",
    "depends-on": "depends_on",
    "needs": "depends_on",
    "paused": "suspend",
    "suspended": "suspend",
    "strategy": "rollout",
    "ingress": "route",
    "api_version": "apiVersion",
    "apiversion": "apiVersion",
    "meta": "metadata",
    "pip": "python",
    "npm": "node",
    "artifacts": "outputs",
    "requirements_txt": "requirements",
    "package_lock": "lockfile",
}


@dataclass(frozen=True, order=True)
class Problem:
    """One error in a garden: where it is and what is wrong."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "col": self.col, "message": self.message}


@cache
def load_schema(name: str = SPORE_SCHEMA) -> dict[str, Any]:
    with (SCHEMA_DIR / name).open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


_ANNOTATIONS = {"description", "title", "$comment"}


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local ``{"$ref": "#/$defs/x"}`` by their target (our refs never recurse).

    The file keeps its ``$defs`` for editors; the validator runs a third faster without the
    per-document reference lookups.
    """
    if isinstance(node, dict):
        ref = node.get("$ref")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        if isinstance(ref, str) and ref.startswith("#/$defs/") and set(rest) <= _ANNOTATIONS:
            return _inline_refs({**defs[ref.removeprefix("#/$defs/")], **rest}, defs)
        return {k: v if k == "$defs" else _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    return node


@cache
def _validator() -> Draft202012Validator:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(_inline_refs(schema, schema.get("$defs", {})))


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a close choice, or ``""``."""
    target = SYNONYMS.get(word) or SYNONYMS.get(word.lower())
    if target not in choices:
        close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
        lowered = {c.lower(): c for c in choices}
        target = close[0] if close else lowered.get(word.lower().replace("-", "_"))
    return f" (did you mean '{target}'?)" if target else ""


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./-]+")


def _where(ptr: Pointer) -> str:
    out = ""
    for part in ptr:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(part):
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or "document"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _problems_for(err: ValidationError, doc: Document) -> Iterator[tuple[Mark, str]]:
    ptr: Pointer = tuple(err.absolute_path)
    expected_value: Any = err.validator_value  # typed as "maybe unset"; always set here
    value: Any = err.instance
    where = _where(ptr)
    kind = err.validator
    schema = err.schema if isinstance(err.schema, dict) else {}
    custom = schema.get("x-message")
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        for key in value:
            if key not in known:
                hint = did_you_mean(key, known)
                yield doc.key_mark((*ptr, key)), f"unknown field {key!r} in {where}{hint}"
        return
    if kind == "required":
        missing = [k for k in expected_value if k not in value]
        for key in missing:
            mark = doc.key_mark(ptr) if ptr else doc.start
            yield mark, f"{where}: missing required field '{key}'"
        return
    if "propertyNames" in err.schema_path:
        # jsonschema descends into the key itself: point at the key.
        mark = doc.key_mark((*ptr, str(value)))
        msg = custom or f"does not match {schema.get('pattern', '')}"
        yield mark, f"{where}: key {_show(value)} {msg}"
        return
    mark = doc.value_mark(ptr)
    if kind == "type":
        expected = expected_value
        names = [expected] if isinstance(expected, str) else list(expected)
        want = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        hint = ""
        if "string" in names and isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = f' (quote it: "{value}")'
        yield mark, f"{where}: expected {want}, got {_type_of(value)} {_show(value)}{hint}"
    elif kind == "const":
        yield mark, f"{where}: must be {_show(expected_value)}, got {_show(value)}"
    elif kind == "enum":
        choices = [str(c) for c in expected_value]
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        yield mark, f"{where}: {_show(value)} is not one of {', '.join(choices)}{hint}"
    elif kind == "pattern":
        yield mark, f"{where}: {_show(value)} {custom or 'does not match ' + expected_value}"
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "greater than",
            "exclusiveMaximum": "less than",
        }
        yield (
            mark,
            f"{where}: {_show(value)} is out of range (must be {words[kind]} {expected_value})",
        )
    elif kind == "minItems":
        yield mark, f"{where}: must not be empty"
    elif kind == "minLength":
        yield mark, f"{where}: must not be empty"
    elif kind == "uniqueItems":
        yield mark, f"{where}: items must be unique"
    else:
        yield mark, f"{where}: {custom or err.message}"


def check_document(doc: Document) -> list[Problem]:
    """Every schema error of one document, in file order."""
    out: set[Problem] = set()
    for err in _validator().iter_errors(doc.value):
        for mark, message in _problems_for(err, doc):
            out.add(Problem(doc.path, mark.line, mark.col, message))
    return sorted(out)


_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def document_name(doc: Document) -> str | None:
    """The document's ``metadata.name`` if it is a valid name, else ``None``."""
    meta = doc.value.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and _NAME_RE.match(name) else None
