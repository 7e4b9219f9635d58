"""The Git source against real repositories on disk: a bare remote and real commits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from reconciler.errors import GardenSourceError
from reconciler.garden.git import GitGarden, GitPoller

APP = """\
apiVersion: myco/v1
kind: Spore
metadata:
  name: {name}
spec:
  version: "{version}"
  source: ../apps/{name}
  command: [python3, app.py]
"""


class Upstream:
    """A bare repository and a work tree that pushes to it, as a developer would."""

    def __init__(self, base: Path) -> None:
        self.bare_path = base / "remote.git"
        git.Repo.init(self.bare_path, bare=True, initial_branch="main").close()
        self.dev_path = base / "dev"
        self.dev = git.Repo.init(self.dev_path, initial_branch="main")
        with self.dev.config_writer() as cfg:
            cfg.set_value("user", "name", "Test")
            cfg.set_value("user", "email", "test@example.invalid")
            cfg.set_value("commit", "gpgsign", "false")
        self.dev.create_remote("origin", str(self.bare_path))

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for rel, text in files.items():
            p = self.dev_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            self.dev.index.add([rel])
        sha = self.dev.index.commit(message).hexsha
        self.dev.remote("origin").push("main:main")
        return str(sha)

    def add_app(self, name: str, version: str = "1.0.0") -> str:
        return self.commit(
            {
                f"apps/{name}/app.py": "print('hi')\n",
                f"garden/{name}.yaml": APP.format(name=name, version=version),
            },
            f"{name} {version}",
        )


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = Upstream(tmp_path)
    yield up
    up.dev.close()


def test_clone_read_refresh(upstream: Upstream, tmp_path: Path) -> None:
    first = upstream.add_app("billing")
    with GitGarden(
        upstream.bare_path, branch="main", subdir="garden", workdir=tmp_path / "wd"
    ) as g:
        result = g.read()
        assert result.problems == []
        assert result.garden.revision == first
        assert [a.name for a in result.garden.apps] == ["billing"]
        assert result.garden.apps[0].dna.source == (tmp_path / "wd" / "apps" / "billing").resolve()

        second = upstream.add_app("frontend")
        assert g.read().garden.revision == first  # nothing moves until refresh
        assert g.refresh() == second
        result = g.read()
        assert result.garden.revision == second
        assert sorted(a.name for a in result.garden.apps) == ["billing", "frontend"]


def test_a_bad_commit_keeps_the_good_apps(upstream: Upstream, tmp_path: Path) -> None:
    upstream.add_app("billing")
    upstream.add_app("frontend")
    bad = upstream.commit(
        {"garden/frontend.yaml": APP.format(name="frontend", version="2") + "  replicas: 2\n"}
    )
    with GitGarden(upstream.bare_path, subdir="garden", workdir=tmp_path / "wd") as g:
        result = g.read()
        assert result.garden.revision == bad
        assert [a.name for a in result.garden.apps] == ["billing"]
        assert [name for name, _ in result.garden.invalid] == ["frontend"]
        assert [str(p) for p in result.problems] == [
            # named by its path in the repository, not in the private clone
            "garden/frontend.yaml:9:3: unknown field 'replicas' in spec (did you mean 'instances'?)"
        ]


def test_local_work_tree_read_in_place(upstream: Upstream) -> None:
    sha = upstream.add_app("billing")
    with GitGarden(upstream.dev_path / "garden") as g:
        assert not g.remote
        assert g.garden_dir == (upstream.dev_path / "garden").resolve()
        result = g.read()
        assert result.garden.revision == sha
        assert [a.name for a in result.garden.apps] == ["billing"]
    assert (upstream.dev_path / "garden").is_dir()  # a user's checkout is never deleted


def test_unknown_branch_and_missing_remote(upstream: Upstream, tmp_path: Path) -> None:
    upstream.add_app("billing")
    with pytest.raises(GardenSourceError, match="cannot clone"):
        GitGarden(upstream.bare_path, branch="nope", workdir=tmp_path / "a")
    with pytest.raises(GardenSourceError, match="cannot clone"):
        GitGarden(tmp_path / "missing.git", workdir=tmp_path / "b")


def test_own_workdir_is_removed(upstream: Upstream) -> None:
    upstream.add_app("billing")
    g = GitGarden(upstream.bare_path, subdir="garden")
    workdir = g.work_tree
    assert workdir.is_dir()
    g.close()
    assert not workdir.exists()


async def test_poller_yields_new_commits_and_obeys_trigger(
    upstream: Upstream, tmp_path: Path
) -> None:
    first = upstream.add_app("billing")
    with GitGarden(upstream.bare_path, subdir="garden", workdir=tmp_path / "wd") as g:
        # A long interval: only trigger() can make the second poll happen within the test.
        poller = GitPoller(g, interval_s=3600)
        stream = aiter(poller)
        assert await asyncio.wait_for(anext(stream), 30) == first
        second = upstream.add_app("frontend")
        poller.trigger()
        assert await asyncio.wait_for(anext(stream), 30) == second
        await stream.aclose()  # type: ignore[attr-defined]
