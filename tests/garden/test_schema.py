"""The schema files: valid draft 2020-12, with $ids, shipped inside the package, and usable
by other tools (check-jsonschema here, as an editor or CI would use them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

from reconciler.garden.schema import SCHEMA_DIR, SPORE_SCHEMA_ID

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = sorted((REPO / "schemas").glob("*.json"))


def test_schemas_are_valid_2020_12_with_ids() -> None:
    assert SCHEMAS
    for path in SCHEMAS:
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].startswith("https://")
        Draft202012Validator.check_schema(schema)


def test_package_sees_the_same_files() -> None:
    # reconciler/schemas -> ../schemas, so an installed wheel carries them as package data
    assert (REPO / "reconciler" / "schemas").resolve() == (REPO / "schemas").resolve()
    assert SCHEMA_DIR.resolve() == (REPO / "schemas").resolve()
    spore = json.loads((SCHEMA_DIR / "spore.v1.json").read_text())
    assert spore["$id"] == SPORE_SCHEMA_ID


def test_other_tools_can_use_the_schema(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "apiVersion: myco/v1\nkind: Spore\nmetadata: {name: a}\n"
        "spec: {version: '1', source: ., command: [x]}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("command: [x]", "command: [x], replicas: 2"))
    cmd = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMAS[0])]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fail = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1
    assert "replicas" in fail.stdout + fail.stderr
