"""The loader's refusals and its marks, on inputs too small for a corpus directory."""

from __future__ import annotations

import pytest

from reconciler.errors import GardenLoadError
from reconciler.garden.loader import MAX_ALIAS_NODES, decode, load_text


def refusal(text: str) -> tuple[int, int, str]:
    with pytest.raises(GardenLoadError) as info:
        load_text(text, "f.yaml")
    return info.value.line, info.value.col, info.value.message


def test_marks_point_at_keys_and_values() -> None:
    [doc] = load_text("a:\n  b: [1, {c: x}]\n", "f.yaml")
    assert doc.value == {"a": {"b": [1, {"c": "x"}]}}
    assert (doc.keys[("a", "b")].line, doc.keys[("a", "b")].col) == (2, 3)
    assert (doc.values[("a", "b", 1, "c")].line, doc.values[("a", "b", 1, "c")].col) == (2, 14)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: !!python/name:os.system x\n",
            (1, 4, "YAML tag !!python/name:os.system is not allowed"),
        ),
        ("a: !!binary aGk=\n", (1, 4, "YAML tag !!binary is not allowed")),
        ("a: !!set {x}\n", (1, 4, "YAML tag !!set is not allowed")),
        ("a: !!omap [x: 1]\n", (1, 4, "YAML tag !!omap is not allowed")),
        ("? [a, b]\n: 1\n", (1, 3, "mapping keys must be plain scalars")),
        ("a: 1\nb: 2\na: 3\n", (3, 1, "duplicate key 'a' (first at line 1)")),
        ("[1, 2]\n", (1, 1, "a garden document must be a mapping")),
        ("a: 1\n---\n- x\n", (3, 1, "a garden document must be a mapping")),
        ("a: [\n", (2, 1, "invalid YAML: did not find expected node content")),
        ("a: *nope\n", (1, 4, "invalid YAML: found undefined alias")),
    ],
)
def test_refusals(text: str, expected: tuple[int, int, str]) -> None:
    line, col, message = refusal(text)
    # libyaml and the pure-Python parser word some YAML errors slightly differently
    assert (line, col) == expected[:2]
    assert message.startswith(expected[2])


def test_alias_bound() -> None:
    items = ", ".join("x" for _ in range(MAX_ALIAS_NODES))
    assert refusal(f"a: &a [{items}]\nb: *a\n")[2].startswith("aliases expand to more than")
    # below the bound it is fine
    [doc] = load_text("a: &a [1, 2]\nb: *a\nc: *a\n", "f.yaml")
    assert doc.value == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


def test_decode_refusals() -> None:
    with pytest.raises(GardenLoadError) as info:
        decode(b"a: 1\nb: \xc3\x28\n", "f.yaml")
    assert (info.value.line, info.value.col) == (2, 4)
    with pytest.raises(GardenLoadError):
        decode(b"#" * (1024 * 1024 + 1), "f.yaml")


def test_empty_documents_are_skipped() -> None:
    assert load_text("", "f.yaml") == []
    assert load_text("# only a comment\n---\n---\n", "f.yaml") == []
