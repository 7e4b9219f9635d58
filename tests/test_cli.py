"""The CLI skeleton: usage errors exit 2, help works, no traceback."""

from __future__ import annotations

import subprocess
import sys

from reconciler.cli import main


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_is_usage_error(capsys):
    assert main(["no-such-verb"]) == 2
    err = capsys.readouterr().err
    assert "myco: error:" in err
    assert "Traceback" not in err


def test_python_dash_m_runs():
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert out.stdout.startswith("myco ")


def _leaf_parsers(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _leaf_parsers(sub, (*path, name))
                else:
                    yield (*path, name), sub


def test_every_verb_takes_verbose_and_json_logs():
    from reconciler.cli import build_parser

    leaves = dict(_leaf_parsers(build_parser()))
    assert {("up",), ("agent",), ("edge",), ("reconcile",), ("validate",), ("repo", "ls")} <= set(
        leaves
    )
    for path, sub in leaves.items():
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"-v", "--log-format"} <= options, path


def test_json_log_lines_are_json(tmp_path):
    import json

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    assert main(["keygen", "--out", str(tmp_path), "--name", "k"]) == 0
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "build", str(root / "garden" / "billing.yaml"),
         "--key", str(tmp_path / "k.key"), "--out", str(tmp_path / "out"),
         "-v", "--log-format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert records
    assert {"ts", "level", "logger", "msg"} <= set(records[0])


def test_command_map_names_every_verb_of_each_module():
    import argparse
    import importlib

    from reconciler.cli import COMMAND_MODULES, common_options

    for module, verbs in COMMAND_MODULES.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"reconciler.commands.{module}").register(sub, common_options())
        assert set(sub.choices) == set(verbs), module


def test_a_verb_loads_only_its_own_module():
    code = (
        "import sys\n"
        "from reconciler.cli import COMMAND_MODULES, build_parser\n"
        "build_parser('agent')\n"
        "verbs = {f'reconciler.commands.{m}' for m in COMMAND_MODULES}\n"
        "loaded = [m for m in sys.modules if m in verbs]  # shared helpers (options) aside\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['reconciler.commands.agent_cmds']"


def test_daemons_and_mesh_verbs_share_their_options():
    from reconciler.cli import build_parser

    leaves = dict(_leaf_parsers(build_parser()))

    def helps(verb):
        return {o: a.help for a in leaves[(verb,)]._actions for o in a.option_strings}

    fabric = ("--join", "--gossip-bind", "--advertise", "--gossip-key", "--cluster", "--profile")
    for flag in (*fabric, "--insecure"):
        verbs = ("agent", "edge", "reconcile", "apply", "members")
        texts = {helps(verb).get(flag) for verb in verbs}
        assert None not in texts, (flag, texts)
        assert len(texts) == 1, (flag, texts)
    for verb in ("agent", "reconcile", "status", "logs", "apply", "diff", "drain", "history"):
        assert "--state" in helps(verb), verb
    api = {helps(v)["--api"] for v in ("status", "logs", "apply", "diff", "rollback", "resume")}
    assert len(api) == 1
    assert "--agent" in helps("drain")  # the old spelling of --api


def test_old_spellings_still_parse():
    from reconciler.cli import build_parser

    args = build_parser("members").parse_args(
        ["members", "--join", "127.0.0.1:1", "--bind", "127.0.0.1:5", "--key-file", "k"]
    )
    assert (args.gossip_bind, str(args.gossip_key), args.join) == (
        "127.0.0.1:5",
        "k",
        ["127.0.0.1:1"],
    )
    args = build_parser("drain").parse_args(["drain", "n1", "--agent", "http://127.0.0.1:9"])
    assert args.api == "http://127.0.0.1:9"
