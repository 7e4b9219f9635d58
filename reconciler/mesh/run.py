"""``myco run``: the seed's quick start on the same machinery as ``myco up``.

The seed ran one pre-built spore straight from a repo (``run -repo R -digest D -app A
-instances N``). Here the spore is fetched from the repo by digest and verified (digest,
signature, trust for that app name) exactly as an agent would; its DNA and files become a
one-app garden in the state directory, and ``myco up`` runs that garden. The mesh's own
reconciler signs what it runs with the mesh identity, so the digest the agents run is the
mesh's rebuild of the same files and DNA (reproducible), not the digest given.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError
from reconciler.repo import SporeRepo
from reconciler.spore.extract import extract_spore
from reconciler.spore.manifest import SporeManifest
from reconciler.spore.trust import TrustPolicy
from reconciler.spore.verify import verify_spore


def garden_document(manifest: SporeManifest, source: str, instances: int) -> dict[str, Any]:
    """A garden-format-v1 document that describes the same DNA as ``manifest``."""
    data = manifest.to_json()
    runtime = data.get("runtime", {})
    spec: dict[str, Any] = {
        "version": manifest.version,
        "source": source,
        "command": list(runtime.get("command", manifest.command)),
        "instances": instances,
    }
    if runtime.get("args"):
        spec["args"] = list(runtime["args"])
    if runtime.get("env"):
        spec["env"] = dict(runtime["env"])
    for key in ("nutrients", "slo", "security", "health", "restart"):
        value = data.get(key)
        if isinstance(value, dict):
            kept = {k: v for k, v in value.items() if v is not None}
            if kept:
                spec[key] = kept
    return {
        "apiVersion": "myco/v1",
        "kind": "Spore",
        "metadata": {"name": manifest.name},
        "spec": spec,
    }


def prepare_run_garden(
    repo_dir: Path, digest: str, app: str, instances: int, trust_files: Sequence[Path], state: Path
) -> Path:
    """Verify the spore and lay it out as a one-app garden; return the garden directory."""
    repo = SporeRepo(repo_dir)
    path = repo.path(digest)  # re-checks the digest
    trust = TrustPolicy.load(list(trust_files))
    verified = verify_spore(path, trust, expected_digest=digest, deep=True)
    if verified.manifest.name != app:
        raise ConfigError(f"spore {digest[:12]} is app {verified.manifest.name!r}, not {app!r}")
    root = state / "run"
    if root.exists():
        shutil.rmtree(root)
    (root / "garden").mkdir(parents=True)
    extract_spore(verified, root / "spores" / app)
    doc = garden_document(verified.manifest, f"../spores/{app}", instances)
    (root / "garden" / f"{app}.yaml").write_text(
        f"# Made by `myco run` from spore {digest}\n" + yaml.safe_dump(doc, sort_keys=False),
        encoding="utf-8",
    )
    # The garden's repository root bounds where `source` may point: make it this folder.
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=30)  # noqa: S603,S607
    return root / "garden"
