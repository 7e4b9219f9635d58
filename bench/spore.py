"""Spore build/verify throughput against raw SHA-256, and peak memory.

    python -m bench.spore [--json] [--size-mb 256] [--files 16] [--runs 3] [--compressible]

Writes ``--size-mb`` MiB of payload files (random bytes, so stored rather than deflated,
unless ``--compressible``), builds and signs a spore of them, verifies it (structure,
signature, trust, the signed payload region and the archive digest: what an agent runs
before extracting, which re-hashes every file), and in the same run hashes
the same payload bytes with plain ``hashlib.sha256`` (read in 1 MiB chunks, as the spore
code reads). Verify and the baseline run ``--runs`` times, alternating; the best of each
is reported (the machine is shared, the best is the least disturbed). ``--json`` prints one
object with ``build_mb_s``, ``verify_mb_s``, ``sha256_mb_s``, ``verify_ratio`` (verify /
sha256) and ``peak_rss_mb`` (the process's peak resident set, from getrusage); also
``verify_deep_mb_s``, ``verify_spore(deep=True)`` (``myco verify``), which also inflates and
hashes every payload file: a second pass.

Targets: ``verify_ratio >= 0.8``; ``peak_rss_mb < 100`` whatever the payload size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from reconciler.model import Dna
from reconciler.spore.build import build_spore
from reconciler.spore.keys import generate_keypair, load_public_key, raw_public_bytes
from reconciler.spore.trust import TrustPolicy
from reconciler.spore.verify import verify_spore

CHUNK = 1 << 20


def write_payload(src: Path, size_mb: int, files: int, compressible: bool) -> list[Path]:
    src.mkdir(parents=True)
    per_file = max(1, size_mb // files)
    paths = []
    line = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(20))
    for i in range(files):
        p = src / f"data-{i:03d}.bin"
        with open(p, "wb") as f:
            for _ in range(per_file):
                if compressible:
                    block = (line * (CHUNK // len(line) + 1))[: CHUNK - 64] + os.urandom(64)
                else:
                    block = os.urandom(CHUNK)
                f.write(block)
        paths.append(p)
    (src / "app.py").write_text("print('bench')\n")
    return paths


def sha256_files(paths: list[Path]) -> float:
    """Seconds to hash the files with plain hashlib.sha256, reading 1 MiB at a time."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        h.hexdigest()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.spore", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--size-mb", type=int, default=256, help="payload size in MiB (256)")
    ap.add_argument("--files", type=int, default=16, help="number of payload files (16)")
    ap.add_argument("--runs", type=int, default=3, help="verify/sha256 repetitions (3)")
    ap.add_argument("--compressible", action="store_true", help="text-like payload (deflated)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="myco-bench-") as tmp:
        root = Path(tmp)
        paths = write_payload(root / "src", args.size_mb, args.files, args.compressible)
        payload_mb = sum(p.stat().st_size for p in paths) / 2**20
        key, pub = generate_keypair(root / "keys", "bench")
        trust = TrustPolicy.for_keys(raw_public_bytes(load_public_key(pub)))
        dna = Dna("bench", "1.0.0", root / "src", ("python3", "app.py"))

        t0 = time.perf_counter()
        built = build_spore(dna, key, root / "out")
        build_s = time.perf_counter() - t0

        verify_times, deep_times, sha_times = [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            verify_spore(built.path, trust, expected_digest=built.digest)
            verify_times.append(time.perf_counter() - t0)
            sha_times.append(sha256_files(paths))
            t0 = time.perf_counter()
            verify_spore(built.path, trust, expected_digest=built.digest, deep=True)
            deep_times.append(time.perf_counter() - t0)
        spore_mb = built.path.stat().st_size / 2**20

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "payload_mb": round(payload_mb, 1),
        "spore_mb": round(spore_mb, 1),
        "compressible": args.compressible,
        "runs": args.runs,
        "build_mb_s": round(payload_mb / build_s, 1),
        "verify_mb_s": round(payload_mb / min(verify_times), 1),
        "sha256_mb_s": round(payload_mb / min(sha_times), 1),
        "verify_ratio": round(min(sha_times) / min(verify_times), 3),
        "verify_deep_mb_s": round(payload_mb / min(deep_times), 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>14}: {v}")
        ok = result["verify_ratio"] >= 0.8 and result["peak_rss_mb"] < 100
        print(f"{'targets':>14}: {'met' if ok else 'NOT met'} (verify_ratio >= 0.8, rss < 100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
