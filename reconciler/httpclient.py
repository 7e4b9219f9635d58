"""One way to make an aiohttp client session: one attempt per request, nothing hidden.

aiohttp's ``ClientSession`` sends an idempotent request (``GET``, ``HEAD``, ``PUT``,
``DELETE``, ``OPTIONS``, ``TRACE``) a second time when the keep-alive connection it reused
turns out to be closed (aiohttp >= 3.9.2, after RFC 9112 §9.3.1), and says nothing about
it. Where the caller has a retry policy of its own (the edge's one retry loop in
``EdgeProxy.forward``) the hidden one doubles what a backend sees; where the caller counts
outcomes (a load generator, a test of a failure) it hides the very failure looked for.
:func:`one_attempt_session` is a ``ClientSession`` with that retry off (aiohttp's own
``test_utils.TestClient`` does the same): a dropped connection surfaces to the caller as
``ServerDisconnectedError`` or ``ClientOSError``, and the caller decides.

The switch, ``ClientSession._retry_connection`` (aiohttp PR #9396, late 2024), is a private
attribute, so its presence is checked: an aiohttp without it (older, or one that renamed
it) makes this raise a :class:`~reconciler.errors.MycoError` naming the version, instead of
quietly retrying again; ``tests/test_httpclient.py`` checks the behaviour itself.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from reconciler.errors import MycoError

_SWITCH = "_retry_connection"


def one_attempt_session(**kwargs: Any) -> aiohttp.ClientSession:
    """``aiohttp.ClientSession(**kwargs)`` that never re-sends a request on its own."""
    if _SWITCH not in getattr(aiohttp.ClientSession, "ATTRS", frozenset()):
        # Checked on the class, before a session (and its connector) exists to leak.
        raise MycoError(
            f"aiohttp {aiohttp.__version__} has no ClientSession.{_SWITCH}: cannot turn off "
            "its silent retry of idempotent requests (it has one since late 2024; tested with 3.14)"
        )
    session = aiohttp.ClientSession(**kwargs)
    session._retry_connection = False
    return session
