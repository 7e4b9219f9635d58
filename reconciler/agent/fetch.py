"""Spores for the agent: fetch by digest (with retries), cache, verify, extract — once each.

The cache is ``<state>/spores/<digest>.spore``, the same layout as a
:class:`~reconciler.repo.SporeRepo`, so the agent serves what it holds to its peers with
:func:`reconciler.repo.http.spore_routes`. A cached spore is verified again (digest,
signature, trust) before its first use by this agent process; the extracted payload is
shared by every instance of that digest (``<state>/payloads/<digest>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from reconciler.errors import (
    FetchError,
    IntegrityError,
    MycoError,
    NotFoundError,
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
    timeout_s: float = 60.0


class SporeCache:
    """Fetch → verify → extract, deduplicated per digest across concurrent sprouts."""

    def __init__(
        self,
        root: Path,
        trust: TrustPolicy,
        session: aiohttp.ClientSession,
        settings: FetchSettings | None = None,
    ) -> None:
        self.spores = root / "spores"
        self.payloads = root / "payloads"
        self.spores.mkdir(parents=True, exist_ok=True)
        self.payloads.mkdir(parents=True, exist_ok=True)
        self.trust = trust
        self.session = session
        self.settings = settings or FetchSettings()
        self._ready: dict[str, Prepared] = {}
        self._inflight: dict[str, asyncio.Future[Prepared]] = {}

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
            verified = await asyncio.to_thread(verify_spore, path, self.trust, digest)
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

    async def _fetch(self, digest: str, urls: tuple[str, ...]) -> None:
        if not urls:
            raise FetchError(f"spore {digest[:12]} is not held here and the intent names no URL")
        s = self.settings
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(FetchError),
            stop=stop_after_attempt(max(1, s.attempts)),
            wait=wait_exponential(multiplier=s.wait_initial_s, max=s.wait_max_s)
            + wait_random(0, s.wait_initial_s),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._fetch_once(digest, urls)

    async def _fetch_once(self, digest: str, urls: tuple[str, ...]) -> None:
        errors: list[str] = []
        for base in urls:
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    await fetch_spore(self.session, base, digest, self.spores)
                log.debug("fetched %s from %s", digest[:12], base)
                return
            except (FetchError, NotFoundError, IntegrityError, TimeoutError) as exc:
                errors.append(f"{base}: {exc}")
            except MycoError as exc:
                errors.append(f"{base}: {exc}")
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
