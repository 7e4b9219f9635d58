"""The safe, line-tracking YAML loader for garden files.

PyYAML composes each document into a node tree (the C parser when available: it keeps
marks and is several times faster); we build plain JSON-like values from the nodes
ourselves, so that nothing is ever constructed from a tag, and we remember where every node
came from. Refused, each with the file, line and column: files over 1 MiB, text that is not
UTF-8, tags other than the plain JSON ones, duplicate mapping keys, merge keys, alias
expansion past :data:`MAX_ALIAS_NODES`, and documents that are not mappings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from yaml.constructor import SafeConstructor

from reconciler.errors import GardenLoadError

MAX_FILE_BYTES = 1024 * 1024
#: How many nodes aliases may expand to, per document. A "billion laughs" file hits it at
#: once; a harmless ``env: *common`` stays far below.
MAX_ALIAS_NODES = 1000

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_T + "str", _T + "int", _T + "float", _T + "bool", _T + "null", _T + "timestamp"}
_SCALARS = {t: SafeConstructor.yaml_constructors[t] for t in _SCALAR_TAGS}
_MAP_TAG = _T + "map"
_SEQ_TAG = _T + "seq"

#: A location inside a document: the keys and indexes from its root.
Pointer = tuple[str | int, ...]


class Mark(NamedTuple):  # a NamedTuple: built ~60,000 times for 1,000 apps, cheaply
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class Document:
    """One YAML document of a garden file: its value and where each node sits."""

    path: str  # as displayed in messages
    index: int  # 0-based position in the file
    value: dict[str, Any]
    start: Mark
    #: pointer -> mark of the value node
    values: dict[Pointer, Mark] = field(default_factory=dict)
    #: pointer -> mark of the mapping key that leads to it
    keys: dict[Pointer, Mark] = field(default_factory=dict)

    def value_mark(self, ptr: Pointer) -> Mark:
        """The mark of the node at ``ptr``, or of its nearest ancestor that exists."""
        while ptr not in self.values and ptr:
            if ptr in self.keys:  # inside an alias: the key that holds it is on the line
                return self.keys[ptr]
            ptr = ptr[:-1]
        return self.values.get(ptr, self.start)

    def key_mark(self, ptr: Pointer) -> Mark:
        """The mark of the key naming ``ptr`` (the value's mark for list items)."""
        if ptr in self.keys:
            return self.keys[ptr]
        return self.value_mark(ptr)


def _mark(m: Any) -> Mark:
    return Mark(m.line + 1, m.column + 1)


class _Builder:
    """Turns one composed node tree into plain values, checking every refusal."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.values: dict[Pointer, Mark] = {}
        self.keys: dict[Pointer, Mark] = {}
        self._constructor = SafeConstructor()
        self._seen: set[int] = set()
        self._alias_budget = MAX_ALIAS_NODES

    def fail(self, message: str, node: Any) -> GardenLoadError:
        m = _mark(node.start_mark)
        return GardenLoadError(message, self.path, m.line, m.col)

    def build(self, node: Any, ptr: Pointer, in_alias: bool = False) -> Any:
        if id(node) in self._seen:
            in_alias = True  # the same node object again: an alias being expanded
        self._seen.add(id(node))
        if in_alias:
            self._alias_budget -= 1
            if self._alias_budget < 0:
                raise self.fail(
                    f"aliases expand to more than {MAX_ALIAS_NODES} nodes (refused)", node
                )
        else:
            self.values[ptr] = _mark(node.start_mark)
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag not in _SCALAR_TAGS:
                raise self.fail(f"YAML tag {_short(tag)} is not allowed", node)
            if tag == _T + "timestamp":
                return str(node.value)  # a date-like version is still the text written
            return _SCALARS[tag](self._constructor, node)
        if isinstance(node, yaml.SequenceNode):
            if tag != _SEQ_TAG:
                raise self.fail(f"YAML tag {_short(tag)} is not allowed", node)
            return [self.build(item, (*ptr, i), in_alias) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if tag != _MAP_TAG:
                raise self.fail(f"YAML tag {_short(tag)} is not allowed", node)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _T + "merge":
                    raise self.fail("merge keys (<<) are not supported", key_node)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                    raise self.fail("mapping keys must be plain scalars", key_node)
                key = str(key_node.value)
                if key in out:
                    first = self.keys.get((*ptr, key))
                    where = f" (first at line {first.line})" if first else ""
                    raise self.fail(f"duplicate key {key!r}{where}", key_node)
                child = (*ptr, key)
                if not in_alias:
                    self.keys[child] = _mark(key_node.start_mark)
                out[key] = self.build(value_node, child, in_alias)
            return out
        raise self.fail("unsupported YAML node", node)  # pragma: no cover


def _short(tag: str) -> str:
    return "!!" + tag[len(_T) :] if tag.startswith(_T) else tag


def decode(data: bytes, path: str) -> str:
    """Check size and encoding; return the text."""
    if len(data) > MAX_FILE_BYTES:
        raise GardenLoadError("file is larger than 1 MiB; refused", path, 1, 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise GardenLoadError(
            f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x})", path, line, col
        ) from exc


def load_text(text: str, path: str) -> list[Document]:
    """Parse every document of one file; raise :class:`GardenLoadError` on the first refusal."""
    if text.startswith("\ufeff"):
        text = text[1:]
    docs: list[Document] = []
    try:
        for index, node in enumerate(yaml.compose_all(text, Loader=_Loader)):
            if node is None:
                continue
            if isinstance(node, yaml.ScalarNode) and node.tag == _T + "null":
                continue  # an empty document (only comments, or a trailing ---)
            builder = _Builder(path)
            if not isinstance(node, yaml.MappingNode):
                raise builder.fail("a garden document must be a mapping", node)
            value = builder.build(node, ())
            docs.append(
                Document(path, index, value, _mark(node.start_mark), builder.values, builder.keys)
            )
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        line, col = (m.line + 1, m.column + 1) if m is not None else (1, 1)
        message = exc.problem or exc.context or "invalid YAML"
        raise GardenLoadError(f"invalid YAML: {message}", path, line, col) from exc
    except yaml.YAMLError as exc:
        raise GardenLoadError(f"invalid YAML: {exc}", path, 1, 1) from exc
    except RecursionError as exc:
        raise GardenLoadError("YAML nesting is too deep", path, 1, 1) from exc
    return docs


def load_file(path: Path, display: str | None = None) -> list[Document]:
    """Read and parse one garden file (all refusals raise :class:`GardenLoadError`)."""
    shown = display if display is not None else str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise GardenLoadError(f"cannot read file: {exc.strerror or exc}", shown, 1, 1) from exc
    if len(data) > MAX_FILE_BYTES:
        raise GardenLoadError("file is larger than 1 MiB; refused", shown, 1, 1)
    return load_text(decode(data, shown), shown)
