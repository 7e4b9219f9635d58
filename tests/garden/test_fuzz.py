"""No input makes the loader or the validator fail with anything but a GardenLoadError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import GardenLoadError
from reconciler.garden.loader import load_text
from reconciler.garden.schema import check_document

# Fragments that make YAML interesting: structure, anchors, tags, garden keys, odd scalars.
FRAGMENTS = st.sampled_from(
    [
        "\n",
        "  ",
        "- ",
        ": ",
        "? ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        "&a ",
        "*a",
        "!!str ",
        "!x ",
        "!!python/object:os.system ",
        "---\n",
        "...\n",
        "#c",
        "'",
        '"',
        "|\n",
        ">\n",
        "apiVersion",
        "myco/v1",
        "kind",
        "Spore",
        "metadata",
        "name",
        "spec",
        "version",
        "source",
        "command",
        "instances",
        "env",
        "route",
        "prefix",
        "depends_on",
        "<<",
        "1",
        "-1",
        "1.5",
        ".nan",
        "~",
        "null",
        "true",
        "yes",
        "2024-01-01",
        "0x1f",
        "é",
        "\t",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAGMENTS, max_size=40).map("".join))
def test_any_text_is_loaded_or_refused(text: str) -> None:
    refused: GardenLoadError | None = None
    try:
        docs = load_text(text, "f.yaml")
    except GardenLoadError as exc:
        refused, docs = exc, []
    if refused is not None:
        assert min(refused.line, refused.col) >= 1
    for doc in docs:
        for problem in check_document(doc):
            assert min(problem.line, problem.col) >= 1
            assert "\n" not in problem.message
