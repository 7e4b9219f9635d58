"""Dependency builds: cold, cached, and reproducible, on a FastAPI app.

    python -m bench.build [--json] [--app DIR] [--timeout 600]

The app is ``workloads/fastapi-hello/`` when it exists (its ``requirements.txt`` is the
pinned lock), else a built-in FastAPI + uvicorn app with its own pinned lock written to a
temporary directory. The package index is whatever the host is configured for (pip.conf,
``PIP_INDEX_URL``), as in production.

* ``cold_build_s``: a whole spore build (``pip install`` of every pinned package, the
  normalisation, packing and signing) with an empty build cache;
* ``cached_build_s``: the same inputs again with that cache: no installer runs (the spore is
  still packed and signed: what ``myco build`` costs);
* ``reproducible``: a second clean build (another cache, another temporary directory,
  another copy of the source) gives the same spore digest (1) or not (0);
* ``sprout_ratio``: not measured here yet (``null``, with ``sprout_skipped`` saying why):
  it needs the agent to run vendored apps (``_vendor/python`` on ``PYTHONPATH``).

Targets: ``cached_build_s <= 0.5``, ``reproducible == 1``, ``sprout_ratio >= 0.8`` (when
measured). ``--json`` prints one object with the figures, ``targets`` and ``targets_met``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from reconciler.model import Build, Dna
from reconciler.spore.deps import BuildSettings, build_app_spore
from reconciler.spore.keys import generate_keypair

WORKLOAD = Path(__file__).resolve().parent.parent / "workloads" / "fastapi-hello"

LOCK = """\
annotated-types==0.7.0
anyio==4.8.0
click==8.1.8
fastapi==0.115.6
h11==0.14.0
idna==3.10
pydantic==2.10.4
pydantic-core==2.27.2
sniffio==1.3.1
starlette==0.41.3
typing-extensions==4.12.2
uvicorn==0.32.1
"""

APP = """\
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/")
def hello() -> dict[str, str]:
    return {"hello": "world"}
"""


def _source(root: Path, given: Path | None) -> Path:
    src = root / "src"
    if given is not None:
        shutil.copytree(given, src, ignore=shutil.ignore_patterns("node_modules", "_vendor"))
    else:
        src.mkdir(parents=True)
        (src / "app.py").write_text(APP)
        (src / "requirements.txt").write_text(LOCK)
    return src


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.build", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--app", type=Path, help="an app directory with requirements.txt")
    ap.add_argument("--timeout", type=float, default=600.0, help="installer timeout (600 s)")
    args = ap.parse_args(argv)
    given = args.app or (WORKLOAD if (WORKLOAD / "requirements.txt").is_file() else None)
    settings = BuildSettings(timeout_s=args.timeout)

    with tempfile.TemporaryDirectory(prefix="myco-bench-build-") as tmp:
        root = Path(tmp)
        src = _source(root / "a", given)
        key, _ = generate_keypair(root / "keys", "bench")
        build = Build("python", requirements="requirements.txt")
        dna = Dna("fastapi-hello", "1.0", src, ("python3", "-m", "uvicorn", "app:app"), build=build)

        t0 = time.perf_counter()
        cold = build_app_spore(dna, key, root / "out-cold", root / "cache-a", settings)
        cold_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        cached = build_app_spore(dna, key, root / "out-cached", root / "cache-a", settings)
        cached_s = time.perf_counter() - t0

        other = _source(root / "b" / "elsewhere", given)
        clean = build_app_spore(
            replace(dna, source=other), key, root / "out-b", root / "cache-b", settings
        )
        assert cold.manifest.build is not None
        figures = {
            "app": str(given) if given else "built-in fastapi+uvicorn",
            "packages": sum(
                1 for f in cold.manifest.files if f.path.endswith("dist-info/METADATA")
            ),
            "files": len(cold.manifest.files),
            "spore_mb": round(cold.path.stat().st_size / 1e6, 2),
            "platform": cold.manifest.build.platform,
            "cold_build_s": round(cold_s, 3),
            "cached_build_s": round(cached_s, 3),
            "cached_same_digest": int(cached.digest == cold.digest),
            "reproducible": int(clean.digest == cold.digest),
            "sprout_ratio": None,
            "sprout_skipped": "needs a real agent running vendored apps (_vendor/python on "
            "PYTHONPATH, the agent's part); not measured in this run",
            "cpus": os.cpu_count(),
        }
    targets = {
        "cached_build_s <= 0.5": cached_s <= 0.5,
        "reproducible == 1": clean.digest == cold.digest,
    }
    ok = all(targets.values())
    if args.json:
        print(json.dumps({**figures, "targets": targets, "targets_met": ok}))
    else:
        for k, v in figures.items():
            print(f"{k:>18}: {v}")
        for name, met in targets.items():
            print(f"{'target':>18}: {name}: {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
