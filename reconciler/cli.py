"""The ``myco`` command line: argument parsing, dispatch and rendering of errors only.

Each area registers its verbs from a module of :mod:`reconciler.commands`; every verb gets
the common options ``-v`` and ``--log-format``. A :class:`~reconciler.errors.MycoError`
becomes one line on stderr and its exit code; no input ever produces a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from reconciler import __version__, logs
from reconciler.errors import MycoError, UsageError

# Modules under reconciler.commands that define ``register(subparsers, common)``, with the
# verbs each registers. Only the module of the verb being run is imported, so a long-lived
# `myco agent` does not carry every other area's imports (tests keep this map true).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "spore_cmds": ("keygen", "build", "verify", "extract", "publish", "repo", "demo"),
    "garden_cmds": ("validate",),
    "fabric_cmds": ("gossip-key", "members"),
    "agent_cmds": ("agent",),
    "edge_cmds": ("edge",),
    "reconcile_cmds": (
        "reconcile",
        "apply",
        "diff",
        "drain",
        "history",
        "rollback",
        "suspend",
        "resume",
    ),  # fmt: skip
    "mesh_cmds": ("up", "down", "init", "run"),
    "observe_cmds": ("status", "logs"),
    "cert_cmds": ("cert",),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting, so main() decides."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def common_options() -> argparse.ArgumentParser:
    """The options every verb accepts."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format on stderr (default: text)",
    )
    return common


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``verb``, only that verb's module is loaded (if it is known)."""
    common = common_options()
    parser = _Parser(
        prog="myco",
        description="Mycelium Mesh: a declarative, containerless orchestrator.",
    )
    parser.add_argument("--version", action="version", version=f"myco {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = [m for m, verbs in COMMAND_MODULES.items() if verb in verbs] or COMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(f"reconciler.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"reconciler.commands.{name}":
                continue  # that area is not built yet
            raise
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(verb)
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"myco: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(getattr(args, "verbose", 0), getattr(args, "log_format", "text"))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = func(args)
    except MycoError as exc:
        print(f"myco: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("myco: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the last line of defence: never a traceback for the user
        logging.getLogger("myco.cli").debug("internal error", exc_info=True)
        print(
            f"myco: internal error: {type(exc).__name__}: {exc} (run with -vv for details)",
            file=sys.stderr,
        )
        return 70
    return code


def run() -> NoReturn:
    sys.exit(main())
