"""Spores for the agent: fetch by digest (with retries), cache, verify, extract — once each.

The cache is ``<state>/spores/<digest>.spore``, the same layout as a
:class:`~reconciler.repo.SporeRepo`, so the agent serves what it holds to its peers with
:func:`reconciler.repo.http.spore_routes` — only the digests this process has verified
(:meth:`SporeCache.serves`). A cached spore is verified again (digest, signature, trust)
before its first use by this agent process; the extracted payload is shared by every
instance of that digest (``<state>/payloads/<digest>``).

Sources, in order, on every attempt: the intent's ``fetch_urls`` (the reconciler's repo),
then the live peers whose node record announces the digest (:mod:`reconciler.agent.peers`).
In a mesh with identities every source is ``https://`` and the session carries the agent's
client certificate (mutual TLS: the repo and the peers serve spores to members only). A
source that serves bytes not matching the digest is refused and not asked again during
that fetch; attempts are retried with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from reconciler.agent.peers import Peer
from reconciler.errors import (
    FetchError,
    IntegrityError,
    MycoError,
    RepoError,
    SporeFormatError,
)
from reconciler.files import atomic_write
from reconciler.repo.http import fetch_spore
from reconciler.repo.store import check_digest
from reconciler.spore.extract import extract_spore
from reconciler.spore.manifest import SporeManifest
from reconciler.spore.trust import TrustPolicy
from reconciler.spore.verify import VerifiedSpore, verify_spore

log = logging.getLogger("myco.agent")


@dataclass(frozen=True)
class Prepared:
    digest: str
    manifest: SporeManifest
    payload: Path


@dataclass(frozen=True)
class FetchSettings:
    attempts: int = 5
    wait_initial_s: float = 0.1
    wait_max_s: float = 2.0
    timeout_s: float = 60.0  # one download, whole
    connect_timeout_s: float = 5.0  # a dead host fails over after this, not after timeout_s


#: The live peers announcing a digest (the agent reads them from its fabric view).
PeerLookup = Callable[[str], Sequence[Peer]]


@dataclass(frozen=True)
class _Source:
    url: str
    label: str  # "repo https://..." or "peer node-a (https://...)", for the log


class SporeCache:
    """Fetch → verify → extract, deduplicated per digest across concurrent sprouts."""

    def __init__(
        self,
        root: Path,
        trust: TrustPolicy,
        session: aiohttp.ClientSession,
        settings: FetchSettings | None = None,
        *,
        peers: PeerLookup | None = None,
        on_verified: Callable[[str], None] | None = None,
    ) -> None:
        """``session`` fetches from the repo and from peers (with the agent's client
        certificate, in a mesh with identities); ``peers`` finds live peers holding a
        digest; ``on_verified`` is told of each digest newly verified (the agent announces
        it in its node record)."""
        self.spores = root / "spores"
        self.payloads = root / "payloads"
        self.spores.mkdir(parents=True, exist_ok=True)
        self.payloads.mkdir(parents=True, exist_ok=True)
        self.trust = trust
        self.session = session
        self.settings = settings or FetchSettings()
        self.peers = peers
        self.on_verified = on_verified
        self.sources: dict[str, str] = {}  # digest -> the URL it was fetched from
        self._ready: dict[str, Prepared] = {}
        self._inflight: dict[str, asyncio.Future[Prepared]] = {}
        self._verified: dict[str, None] = {}  # verified by this process, oldest first

    async def aclose(self) -> None:
        """Cancel and await fetches still in flight (the agent is stopping)."""
        pending = list(self._inflight.values())
        for fut in pending:
            fut.cancel()
        for fut in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fut

    def held(self) -> list[str]:
        return sorted(p.stem for p in self.spores.glob("*.spore"))

    def serves(self, digest: str) -> bool:
        """Whether ``digest`` may be served to peers: cached and verified by this process."""
        return digest in self._verified

    def verified(self) -> list[str]:
        """The digests verified by this process, most recent first."""
        return list(reversed(self._verified))

    def _mark_verified(self, digest: str) -> None:
        self._verified.pop(digest, None)
        self._verified[digest] = None
        if self.on_verified is not None:
            self.on_verified(digest)

    async def verify_held(self, digests: Iterable[str]) -> None:
        """Verify cached spores (those of re-adopted instances) so they are served again.

        A restarted agent does not fetch the spores of the instances it adopts; this
        re-checks them (digest, signature, trust) so its peers can fetch them from it.
        One that fails is dropped from the cache.
        """
        for digest in dict.fromkeys(digests):
            path = self.spores / f"{digest}.spore"
            if digest in self._verified or not path.is_file():
                continue
            try:
                await asyncio.to_thread(verify_spore, path, self.trust, digest)
            except MycoError as exc:
                log.warning("cached spore %s fails verification (%s); dropped", digest[:12], exc)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            self._mark_verified(digest)

    async def prepare(self, digest: str, fetch_urls: Sequence[str]) -> Prepared:
        """The verified, extracted spore ``digest``; raises a :class:`MycoError`."""
        try:
            check_digest(digest)
        except RepoError as exc:
            raise FetchError(str(exc), delay=60.0) from exc
        done = self._ready.get(digest)
        if done is not None:
            return done
        fut = self._inflight.get(digest)
        if fut is None:
            fut = asyncio.ensure_future(self._prepare(digest, tuple(fetch_urls)))
            self._inflight[digest] = fut
            fut.add_done_callback(lambda _: self._inflight.pop(digest, None))
        # shield: one sprout being cancelled must not cancel the others' shared fetch
        return await asyncio.shield(fut)

    async def _prepare(self, digest: str, urls: tuple[str, ...]) -> Prepared:
        path = self.spores / f"{digest}.spore"
        verified: VerifiedSpore | None = None
        if path.is_file():
            try:
                verified = await asyncio.to_thread(verify_spore, path, self.trust, digest)
            except (IntegrityError, SporeFormatError) as exc:
                log.warning("cached spore %s is damaged (%s); fetching it again", digest, exc)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if verified is None:
            await self._fetch(digest, urls)
            try:
                verified = await asyncio.to_thread(verify_spore, path, self.trust, digest)
            except MycoError:
                # never kept, so never served: only verified spores stay in the cache
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                raise
        self._mark_verified(digest)
        payload = await asyncio.to_thread(self._extract, verified)
        prepared = Prepared(digest, verified.manifest, payload)
        self._ready[digest] = prepared
        log.info(
            "spore %s (%s %s) ready, signed by %s",
            digest[:12],
            verified.manifest.name,
            verified.manifest.version,
            verified.signer,
        )
        return prepared

    def _sources(self, digest: str, urls: tuple[str, ...]) -> list[_Source]:
        out = [_Source(u, f"repo {u}") for u in urls]
        if self.peers is not None:
            out += [
                _Source(p.url, f"peer {p.node} ({p.url})")
                for p in self.peers(digest)
                if p.url not in urls
            ]
        return out

    async def _fetch(self, digest: str, urls: tuple[str, ...]) -> None:
        s = self.settings
        bad: set[str] = set()  # sources that served other bytes: not asked again

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "fetch of spore %s failed (attempt %d of %d), retrying in %.1fs: %s",
                digest[:12],
                state.attempt_number,
                max(1, s.attempts),
                wait,
                exc,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(FetchError),
            stop=stop_after_attempt(max(1, s.attempts)),
            wait=wait_exponential(multiplier=s.wait_initial_s, max=s.wait_max_s)
            + wait_random(0, s.wait_initial_s),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._fetch_once(digest, urls, bad)

    async def _fetch_once(self, digest: str, urls: tuple[str, ...], bad: set[str]) -> None:
        sources = [src for src in self._sources(digest, urls) if src.url not in bad]
        if not sources:
            raise FetchError(
                f"spore {digest[:12]} is not held here, and neither the intent's URLs "
                "nor any live peer can serve it"
            )
        timeout = aiohttp.ClientTimeout(
            total=self.settings.timeout_s, connect=self.settings.connect_timeout_s
        )
        errors: list[str] = []
        for i, src in enumerate(sources):
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    await fetch_spore(
                        self.session,
                        src.url,
                        digest,
                        self.spores,
                        client_timeout=timeout,
                    )
            except IntegrityError as exc:
                bad.add(src.url)
                log.warning(
                    "spore %s: %s served other bytes, refused: %s", digest[:12], src.label, exc
                )
                errors.append(f"{src.label}: {exc}")
                continue
            except TimeoutError:
                errors.append(f"{src.label}: no answer within {self.settings.timeout_s:g}s")
            except MycoError as exc:  # FetchError, NotFoundError, RepoError
                errors.append(f"{src.label}: {exc}")
            else:
                self.sources[digest] = src.url
                if i == 0:
                    log.debug("fetched spore %s from %s", digest[:12], src.label)
                else:
                    log.info(
                        "fetched spore %s from %s (after: %s)",
                        digest[:12],
                        src.label,
                        "; ".join(errors),
                    )
                return
            if i + 1 < len(sources):
                log.info(
                    "spore %s: %s failed (%s); trying %s",
                    digest[:12],
                    src.label,
                    errors[-1].removeprefix(f"{src.label}: "),
                    sources[i + 1].label,
                )
        raise FetchError(f"spore {digest[:12]} unavailable: " + "; ".join(errors))

    def _extract(self, verified: VerifiedSpore) -> Path:
        final = self.payloads / verified.digest
        done = self.payloads / f"{verified.digest}.ok"  # written only after the rename
        if done.is_file() and final.is_dir():
            return final
        if final.exists():
            shutil.rmtree(final)  # a half-finished extraction from a killed agent
        tmp = Path(tempfile.mkdtemp(dir=self.payloads, prefix=f".{verified.digest[:12]}."))
        try:
            extract_spore(verified, tmp / "p")
            os.replace(tmp / "p", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        atomic_write(done, verified.digest + "\n")  # its fsync of the directory covers both
        return final
