"""Serve and fetch spores by digest over HTTP: ``GET {base}/spores/{digest}``.

The server re-checks the digest on every read (a corrupt object is never served). The
client streams the body to a temp file while hashing it and keeps it only if the digest
matches; it is the consumer's job to verify signature and trust afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from reconciler.errors import (
    CorruptObjectError,
    FetchError,
    IntegrityError,
    NotFoundError,
    RepoError,
)
from reconciler.files import atomic_writer
from reconciler.repo.store import DIGEST_RE, SporeRepo, check_digest
from reconciler.spore.archive import CHUNK

log = logging.getLogger("myco.repo")

SPORE_MEDIA_TYPE = "application/vnd.myco.spore+zip"


def spore_routes(repo: SporeRepo, serves: Callable[[str], bool] | None = None) -> web.RouteTableDef:
    """Routes for ``GET /spores/{digest}`` (and HEAD): 400 malformed, 404 unknown.

    ``serves`` narrows what is served: a digest it refuses is 404 even if stored (an
    agent serves only the spores it has verified). Whatever is served is re-hashed first
    and streamed from the file.
    """
    routes = web.RouteTableDef()

    @routes.get("/spores/{digest}")
    async def get_spore(request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not DIGEST_RE.match(digest):
            raise web.HTTPBadRequest(text="malformed digest: expected 64 lowercase hex digits\n")
        if serves is not None and not serves(digest):
            raise web.HTTPNotFound(text=f"no spore {digest}\n")
        try:
            path = await asyncio.to_thread(repo.path, digest)
        except NotFoundError:
            raise web.HTTPNotFound(text=f"no spore {digest}\n") from None
        except CorruptObjectError:
            raise web.HTTPInternalServerError(text=f"stored spore {digest} is corrupt\n") from None
        return web.FileResponse(
            path,
            chunk_size=256 * 1024,
            headers={
                "Content-Type": SPORE_MEDIA_TYPE,
                "X-Myco-Digest": digest,
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    return routes


def repo_app(repo: SporeRepo) -> web.Application:
    """A stand-alone aiohttp application serving ``repo``."""
    app = web.Application()
    app.add_routes(spore_routes(repo))
    return app


async def fetch_spore(
    session: aiohttp.ClientSession,
    base_url: str,
    digest: str,
    dest_dir: Path,
    max_bytes: int = 4 << 30,
    *,
    headers: Mapping[str, str] | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> Path:
    """Download ``{base_url}/spores/{digest}`` into ``dest_dir/<digest>.spore``.

    Streams to a temp file while hashing; raises :class:`IntegrityError` on a digest
    mismatch, :class:`NotFoundError` on 404, :class:`FetchError` (retryable) otherwise.
    ``headers`` go with the request (a peer's credential); ``client_timeout`` replaces the
    session's (a short connect timeout lets a dead host fail over quickly).
    """
    check_digest(digest)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/spores/{digest}"
    target = dest_dir / f"{digest}.spore"
    h = hashlib.sha256()
    size = 0
    # Not fsynced: a download lost in a crash is fetched again (and re-hashed before use).
    with atomic_writer(target, 0o644, durable=False) as out:
        try:
            request = (
                session.get(url, headers=headers)
                if client_timeout is None
                else session.get(url, headers=headers, timeout=client_timeout)
            )
            async with request as resp:
                if resp.status == 404:
                    raise NotFoundError(f"{url}: no such spore")
                if resp.status == 401:
                    raise FetchError(f"{url}: HTTP 401 (credential refused)")
                if resp.status != 200:
                    raise FetchError(f"{url}: HTTP {resp.status}")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise RepoError(f"{url}: spore larger than {max_bytes} bytes")
                    h.update(chunk)
                    out.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if h.hexdigest() != digest:
            raise IntegrityError(f"{url}: body hashes to {h.hexdigest()}, not {digest}")
    return target
