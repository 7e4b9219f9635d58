"""Spore and repo verbs: ``keygen``, ``build``, ``verify``, ``extract``, ``publish``,
``repo ls``, ``repo serve`` and the ``demo`` walk-through.

Parsing and rendering only: the work is done by :mod:`reconciler.spore` and
:mod:`reconciler.repo`. Errors are :class:`~reconciler.errors.MycoError`, which the CLI
prints as one line (exit 1, or 2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from reconciler.addr import format_addr, parse_addr
from reconciler.errors import ConfigError, GardenInvalid, UsageError
from reconciler.garden import find_repo_root, read_app_file, read_garden
from reconciler.home import state_dir
from reconciler.model import AppSpec
from reconciler.repo.store import SporeRepo
from reconciler.spore.build import BuiltSpore, build_spore
from reconciler.spore.deps import BuildError, BuildSettings, BuildStep, build_app_spore
from reconciler.spore.extract import extract_spore
from reconciler.spore.keys import fingerprint, generate_keypair, load_public_key
from reconciler.spore.seed import dna_from_seed_json
from reconciler.spore.trust import TrustPolicy
from reconciler.spore.verify import VerifiedSpore, verify_spore


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "keygen",
        parents=[common],
        help="make an Ed25519 signing key pair",
        description="Write DIR/NAME.key (PKCS#8 PEM, mode 0600) and DIR/NAME.pub (PEM).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the key files")
    p.add_argument("--name", required=True, help="base name of the key files")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "build",
        parents=[common],
        help="build and sign a spore",
        description="Build the spore of a garden document (MANIFEST.yaml), or of the seed's "
        "flat JSON DNA with --manifest M.json --binary PATH. Writes one *.spore into --out "
        "and prints its path and digest.",
    )
    p.add_argument("app_file", nargs="?", metavar="MANIFEST.yaml", help="a garden file")
    p.add_argument("--app", metavar="NAME", help="which document of a multi-document file")
    p.add_argument(
        "--repo-root",
        metavar="PATH",
        help="where spec.source may point (default: the enclosing Git work tree, else the "
        "manifest's directory)",
    )
    p.add_argument("--manifest", metavar="M.json", help="the seed's flat JSON DNA")
    p.add_argument("--binary", metavar="PATH", help="the one payload file (with --manifest)")
    p.add_argument("--key", required=True, metavar="KEY", help="private key (PEM) to sign with")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the spore")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--state",
        metavar="DIR",
        help="state directory holding the build cache (<state>/build-cache; default: "
        "$MYCO_HOME or ./.myco)",
    )
    p.add_argument(
        "--build-timeout",
        type=float,
        default=BuildSettings.timeout_s,
        metavar="SECONDS",
        help="bound on each installer or build command run (default: %(default)g)",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="verify a spore's structure, signature, trust and hashes",
        description="Exit 0 and print name, version, digest and signer, or exit 1 with the "
        "reason. FILE is a public key PEM (trusted for every app) or a trust policy file.",
    )
    p.add_argument("spore", metavar="SPORE")
    _trust_option(p)
    p.add_argument("--digest", metavar="SHA256", help="also require this digest")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "extract",
        parents=[common],
        help="verify a spore and extract its payload into a new directory",
    )
    p.add_argument("spore", metavar="SPORE")
    _trust_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="absent or empty directory")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "publish",
        parents=[common],
        help="store a spore in a content-addressed repo; print its digest",
    )
    p.add_argument("spore", metavar="SPORE")
    p.add_argument("--repo", required=True, metavar="DIR", help="the repo directory")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("repo", parents=[common], help="inspect or serve a spore repo")
    repo_sub = p.add_subparsers(dest="repo_command", metavar="COMMAND", parser_class=type(p))
    ls = repo_sub.add_parser("ls", parents=[common], help="list name, version, digest")
    ls.add_argument("--repo", required=True, metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=cmd_repo_ls)
    serve = repo_sub.add_parser("serve", parents=[common], help="serve GET /spores/{digest}")
    serve.add_argument("--repo", required=True, metavar="DIR")
    serve.add_argument("--bind", default="127.0.0.1:8070", metavar="HOST:PORT")
    serve.set_defaults(func=cmd_repo_serve)
    p.set_defaults(func=lambda args: _usage("myco repo: choose ls or serve"))

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="walk through keygen → build → publish → verify with the example garden",
    )
    p.add_argument(
        "--state", metavar="DIR", help="state directory (default: $MYCO_HOME or ./.myco)"
    )
    p.add_argument("--garden", default="garden", metavar="DIR", help="(default: ./garden)")
    p.set_defaults(func=cmd_demo)


def _trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        action="append",
        required=True,
        metavar="FILE",
        help="public key PEM or trust policy file (repeatable)",
    )


def _usage(message: str) -> int:
    raise UsageError(message)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=True))


# -- keygen ----------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    key_path, pub_path = generate_keypair(Path(args.out), args.name, force=args.force)
    print(f"private key: {key_path}")
    print(f"public key:  {pub_path}")
    print(f"fingerprint: {fingerprint(load_public_key(pub_path))}")
    return 0


# -- build -----------------------------------------------------------------------------


def pick_app(apps: list[AppSpec], name: str | None, where: str) -> AppSpec:
    """The document named ``name``, or the only one."""
    if name is not None:
        for app in apps:
            if app.name == name:
                return app
        names = ", ".join(a.name for a in apps)
        raise UsageError(f"{where} has no app {name!r} (it has: {names})")
    if len(apps) != 1:
        names = ", ".join(a.name for a in apps)
        raise UsageError(f"{where} holds several apps ({names}); choose one with --app")
    return apps[0]


def load_app(path: Path, name: str | None, repo_root: Path | None = None) -> AppSpec:
    try:
        apps = read_app_file(path, repo_root)
    except GardenInvalid as exc:
        for problem in exc.problems:
            print(_problem_line(problem), file=sys.stderr)
        raise
    return pick_app(apps, name, str(path))


def _problem_line(problem: object) -> str:
    path, line, col = (getattr(problem, a, "") for a in ("path", "line", "col"))
    return f"{path}:{line}:{col}: {getattr(problem, 'message', problem)}"


def cmd_build(args: argparse.Namespace) -> int:
    if args.manifest or args.binary:
        if args.app_file:
            raise UsageError("give either MANIFEST.yaml or --manifest/--binary, not both")
        if not (args.manifest and args.binary):
            raise UsageError("--manifest and --binary go together")
        dna, files = dna_from_seed_json(Path(args.manifest), Path(args.binary))
        built = build_spore(dna, Path(args.key), Path(args.out), files=files)
    elif args.app_file:
        repo_root = Path(args.repo_root) if args.repo_root else None
        app = load_app(Path(args.app_file), args.app, repo_root)
        if args.build_timeout <= 0:
            raise UsageError("--build-timeout must be greater than 0")
        try:
            built = build_app_spore(
                app.dna,
                Path(args.key),
                Path(args.out),
                state_dir(args.state) / "build-cache",
                BuildSettings(timeout_s=args.build_timeout),
                _print_step,
            )
        except BuildError as exc:
            print_build_log(app.name, exc.log)
            raise
    else:
        raise UsageError("give MANIFEST.yaml, or --manifest M.json --binary PATH")
    _render_built(built, args.json)
    return 0


def _print_step(step: BuildStep) -> None:
    print(f"myco: {step.line()}", file=sys.stderr, flush=True)


def print_build_log(app: str, lines: str) -> None:
    """A failed build's last output lines, on stderr, before the one-line error."""
    if lines:
        print(f"myco: {app}: the build's last output lines:", file=sys.stderr)
        for line in lines.splitlines():
            print(f"  | {line}", file=sys.stderr)
        sys.stderr.flush()


def _render_built(built: BuiltSpore, as_json: bool) -> None:
    m = built.manifest
    if as_json:
        out: dict[str, Any] = {
            "path": str(built.path),
            "digest": built.digest,
            "name": m.name,
            "version": m.version,
        }
        if m.build is not None:
            out["platform"] = m.build.platform
        _print_json(out)
        return
    print(f"spore:  {built.path}")
    print(f"digest: {built.digest}")
    if m.build is not None:
        print(f"build:  {m.build.kind}, platform {m.build.platform}")


# -- verify / extract ------------------------------------------------------------------


def _trust(paths: list[str]) -> TrustPolicy:
    return TrustPolicy.load([Path(p) for p in paths])


def _render_verified(v: VerifiedSpore, as_json: bool) -> None:
    m = v.manifest
    if as_json:
        _print_json(
            {
                "ok": True,
                "name": m.name,
                "version": m.version,
                "digest": v.digest,
                "signer": v.signer,
                "fingerprint": v.signer_fingerprint,
                "files": len(m.files),
                "payload_bytes": m.payload_size,
            }
        )
        return
    print(f"verified: {v.path}")
    print(f"name:     {m.name}")
    print(f"version:  {m.version}")
    print(f"digest:   {v.digest}")
    print(f"signer:   {v.signer} ({v.signer_fingerprint})")


def cmd_verify(args: argparse.Namespace) -> int:
    # deep: also inflate and hash every file against the manifest (a CLI check is thorough)
    verified = verify_spore(Path(args.spore), _trust(args.trust), args.digest, deep=True)
    _render_verified(verified, args.json)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    verified = verify_spore(Path(args.spore), _trust(args.trust))
    dest = extract_spore(verified, Path(args.out))
    m = verified.manifest
    print(f"extracted {m.name} {m.version} ({len(m.files)} files) into {dest}")
    return 0


# -- repo ------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    print(SporeRepo(Path(args.repo)).put(Path(args.spore)))
    return 0


def cmd_repo_ls(args: argparse.Namespace) -> int:
    entries = SporeRepo(Path(args.repo)).list()
    if args.json:
        _print_json(
            [
                {"name": e.name, "version": e.version, "digest": e.digest, "size": e.size}
                for e in entries
            ]
        )
        return 0
    rows = [("NAME", "VERSION", "DIGEST")] + [(e.name, e.version, e.digest) for e in entries]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, version, digest in rows:
        print(f"{name:<{w0}}  {version:<{w1}}  {digest}")
    return 0


def cmd_repo_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from reconciler.repo.http import repo_app

    host, port = parse_addr(args.bind, what="--bind", error=UsageError)
    where = format_addr(host, port)
    web.run_app(
        repo_app(SporeRepo(Path(args.repo))),
        host=host,
        port=port,
        print=lambda _msg: print(f"serving {args.repo} on http://{where}/spores/"),
    )
    return 0


# -- demo ------------------------------------------------------------------------------


def _step(n: int, text: str, command: str) -> None:
    print(f"\n[{n}] {text}\n    $ {command}")


def _indented(text: str) -> None:
    print(f"    {text}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    state = state_dir(args.state)
    garden = Path(args.garden)
    if not garden.is_dir():
        raise ConfigError(
            f"no garden directory at {garden}: run from the project's checkout or pass --garden"
        )
    keys, out, repo_dir = state / "keys", state / "spores", state / "repo"
    key, pub = keys / "dev.key", keys / "dev.pub"
    policy = state / "trust.yaml"

    _step(1, "Make a signing key (Ed25519)", f"myco keygen --out {keys} --name dev")
    if key.exists() and pub.exists():
        print(f"    reusing {key}")
    else:
        generate_keypair(keys, "dev")
        print(f"    wrote {key} (0600) and {pub}")
    print(f"    fingerprint {fingerprint(load_public_key(pub))}")
    if not policy.exists():
        policy.write_text(
            "# Trust policy: which keys may sign which apps (docs/spore.md).\n"
            "apiVersion: myco/v1\nkind: TrustPolicy\nkeys:\n"
            '  - name: dev\n    key: keys/dev.pub\n    apps: ["*"]\n'
        )
    print(f"    trust policy {policy}: key 'dev' may sign every app")

    # Outside Git, let sources point next to the garden (the checkout's workloads/).
    result = read_garden(garden, find_repo_root(garden) or garden.resolve().parent)
    for problem in result.problems:
        print(f"    skipped: {_problem_line(problem)}")
    apps = sorted(result.garden.apps, key=lambda a: a.name)
    if not apps:
        raise ConfigError(f"the garden {garden} holds no valid app")
    built: list[BuiltSpore] = []
    _step(
        2,
        f"Build and sign a spore per app of {garden}/",
        f"myco build FILE --key {key} --out {out}",
    )
    for app in apps:
        b = build_app_spore(
            app.dna, key, out, state / "build-cache", progress=lambda s: _indented(s.line())
        )
        built.append(b)
        print(f"    {app.name} {app.dna.version}: {b.path} ({b.path.stat().st_size} bytes)")

    _step(3, "Publish to the content-addressed repo", f"myco publish SPORE --repo {repo_dir}")
    repo = SporeRepo(repo_dir)
    for b in built:
        print(f"    {b.manifest.name}: {repo.put(b.path)}")

    _step(4, "Verify what the repo serves", f"myco verify SPORE --trust {policy}")
    trust = TrustPolicy.load([policy])
    for b in built:
        v = verify_spore(repo.path(b.digest), trust, expected_digest=b.digest)
        print(f"    ok {v.manifest.name} {v.manifest.version} signed by {v.signer}")

    _step(5, "List the repo", f"myco repo ls --repo {repo_dir}")
    for e in repo.list():
        print(f"    {e.name:<10} {e.version:<8} {e.digest}")
    print(f"\nDone. Keys, spores and repo are in {state}/.")
    return 0
