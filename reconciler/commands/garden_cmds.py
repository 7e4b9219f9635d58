"""``myco validate DIR [--output json]``: every error of every garden file, one per line.

Contract (docs/garden.md): ``path:line:col: message`` per error and exit 1 if any; a one-line
summary and exit 0 if none; exit 2 for usage errors. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reconciler.errors import GardenSourceError, UsageError
from reconciler.garden.reader import GardenReader, find_repo_root


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "validate",
        parents=[common],
        help="check a garden directory: schema, names, routes, dependencies, sources",
        description="Check every *.yaml/*.yml file below DIR and print every error as "
        "path:line:col: message. Exit 0 if the garden is valid, 1 if not, 2 on usage errors.",
    )
    p.add_argument("dir", metavar="DIR", help="the garden directory")
    p.add_argument(
        "--output", choices=("text", "json"), default="text", help="output format (default: text)"
    )
    p.add_argument(
        "--repo-root",
        metavar="PATH",
        default=None,
        help="where spec.source may point (default: the enclosing Git work tree, else DIR)",
    )
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.exists():
        raise UsageError(f"no such directory: {args.dir}")
    if not root.is_dir():
        raise UsageError(f"not a directory: {args.dir}")
    display = args.dir.rstrip("/") or "/"
    if display == ".":
        display = ""
    repo_root = Path(args.repo_root) if args.repo_root else None
    try:
        reader = GardenReader(root, repo_root or find_repo_root(root), display=display)
        result = reader.read()
    except GardenSourceError as exc:
        raise UsageError(str(exc)) from exc
    files = len({app.origin.path for app in result.garden.apps})
    if args.output == "json":
        doc = {
            "ok": result.ok,
            "apps": sorted(app.name for app in result.garden.apps),
            "revision": result.garden.revision,
            "errors": [p.to_json() for p in result.problems],
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for problem in result.problems:
            print(problem)
        if result.ok:
            n = len(result.garden.apps)
            print(
                f"garden {args.dir} is valid: {n} app{'s' if n != 1 else ''} in {files} file"
                f"{'s' if files != 1 else ''}"
            )
        else:
            n = len(result.problems)
            print(f"{n} error{'s' if n != 1 else ''} in garden {args.dir}", file=sys.stderr)
    return 0 if result.ok else 1
