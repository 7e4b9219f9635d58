"""A garden kept in Git: a local work tree, or a remote URL (or bare repository) and branch.

Every read says which commit it came from (``garden.revision`` is the commit SHA). A
remote is cloned once into a private work directory; :meth:`GitGarden.refresh` fetches the
branch and moves the work tree to it (a hard reset: the clone is ours, nobody edits it).
GitPython is blocking: async callers use ``asyncio.to_thread``. :class:`GitPoller` turns
"poll every N seconds, or now when asked" into an async stream of new revisions.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import git

from reconciler.aio import wait_event
from reconciler.errors import GardenSourceError
from reconciler.garden.reader import GardenReader, GardenResult

log = logging.getLogger("myco.garden")


def _is_work_tree(path: Path) -> bool:
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError):
        return False
    return not repo.bare


class GitGarden:
    """A garden read from Git.

    ``url_or_path`` is a local work tree (read in place, at its checked-out commit) or
    anything ``git clone`` accepts (a URL, a bare repository path) together with ``branch``.
    ``subdir`` is the garden's folder inside the repository (default: its root).
    """

    def __init__(
        self,
        url_or_path: str | Path,
        branch: str = "main",
        subdir: str = "",
        workdir: Path | None = None,
    ) -> None:
        self.url = str(url_or_path)
        self.branch = branch
        self.subdir = subdir
        self._own_workdir = False
        self._reader: GardenReader | None = None
        self._read_revision = ""
        local = Path(self.url)
        if local.is_dir() and _is_work_tree(local):
            self.repo = git.Repo(local, search_parent_directories=True)
            self.remote = False
        else:
            self.remote = True
            if workdir is None:
                workdir = Path(tempfile.mkdtemp(prefix="myco-garden-"))
                self._own_workdir = True
            self.repo = self._clone(workdir)
        assert self.repo.working_tree_dir is not None
        self.work_tree = Path(self.repo.working_tree_dir)
        base = self.work_tree if self.remote else local.resolve()
        self.garden_dir = base / subdir if subdir else base

    def _clone(self, workdir: Path) -> git.Repo:
        try:
            if (workdir / ".git").exists():
                repo = git.Repo(workdir)
                self._fetch_reset(repo)
                return repo
            if workdir.is_dir() and any(workdir.iterdir()):  # an interrupted clone
                shutil.rmtree(workdir)
            return git.Repo.clone_from(self.url, workdir, branch=self.branch, single_branch=True)
        except git.exc.GitError as exc:
            raise GardenSourceError(
                f"cannot clone {self.url} (branch {self.branch}): {_short(exc)}"
            ) from exc

    def _fetch_reset(self, repo: git.Repo) -> None:
        origin = repo.remote("origin")
        origin.fetch(f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}")
        repo.git.checkout("-B", self.branch, f"origin/{self.branch}", "--force")
        repo.git.reset("--hard", f"origin/{self.branch}")
        repo.git.clean("-fdx")

    def revision(self) -> str:
        """The commit SHA the work tree is at."""
        try:
            return str(self.repo.head.commit.hexsha)
        except ValueError as exc:  # no commit yet
            raise GardenSourceError(f"{self.url} has no commit") from exc

    def refresh(self) -> str:
        """Fetch the branch from the remote and move to it; return the new SHA.

        A local work tree is read as it is (nothing is pulled into a user's checkout).
        """
        if self.remote:
            try:
                self._fetch_reset(self.repo)
            except git.exc.GitError as exc:
                raise GardenSourceError(f"cannot fetch {self.url}: {_short(exc)}") from exc
        return self.revision()

    def read(self) -> GardenResult:
        """Read and check the garden at the current commit."""
        if self._reader is None:
            # A remote garden's files are named by their path in the repository, not in
            # the reconciler's private clone.
            display = self.subdir.strip("/") if self.remote else None
            self._reader = GardenReader(self.garden_dir, repo_root=self.work_tree, display=display)
        revision = self.revision()
        if revision != self._read_revision:
            self._reader.forget_sources()  # symlinks may have moved with the checkout
            self._read_revision = revision
        return self._reader.read(revision=revision, source=self.url)

    def close(self) -> None:
        self.repo.close()
        if self._own_workdir:
            shutil.rmtree(self.work_tree, ignore_errors=True)

    def __enter__(self) -> GitGarden:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__


class GitPoller:
    """Yields a new commit SHA whenever the remote branch moves.

    Polls every ``interval_s``; :meth:`trigger` (a webhook, a CLI) asks for a poll now.
    The first iteration yields the current SHA. Fetch failures are logged and retried at
    the next interval; they never end the stream.
    """

    def __init__(self, garden: GitGarden, interval_s: float = 30.0) -> None:
        self.garden = garden
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._last: str | None = None

    def trigger(self) -> None:
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        while True:
            try:
                sha = await asyncio.to_thread(self.garden.refresh)
            except GardenSourceError as exc:
                log.warning("garden poll failed: %s", exc)
            else:
                if sha != self._last:
                    self._last = sha
                    yield sha
            await wait_event(self._wake, self.interval_s)
            self._wake.clear()
