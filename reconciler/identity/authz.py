"""Who may do what: the fabric's write table and the HTTP access table. Pure.

Fabric records (a compromised host can lie only about itself)::

    key                                      writer
    node                                     its own member (agent, edge or reconciler)
    certs/<name>                             the member whose certificate name is <name>
    inst/<id>                                an agent (its own instances)
    intents/<node>, routes/<app>, lease,
    garden, build, revocations,
    secrets/<node>/...                       a reconciler
    edge/stats, edge/routes                  an edge

Every record's owner (the fabric member that publishes it) must also be the writer's
certificate name, or that name followed by ``#`` and a suffix (:func:`~.names.owner_matches`).

HTTP: a person's access is ``viewer`` < ``operator`` < ``admin``; members (agents, edges,
reconcilers) may read (viewer) and fetch spores, never change state.
"""

from __future__ import annotations

from typing import Literal

from .names import ACCESS_LEVELS, Access, owner_matches

_MEMBER_OWN = ("agent", "edge", "reconciler")

_EXACT: dict[str, tuple[str, ...]] = {
    "node": _MEMBER_OWN,
    "lease": ("reconciler",),
    "garden": ("reconciler",),
    "build": ("reconciler",),
    "revocations": ("reconciler",),
    "edge/stats": ("edge",),
    "edge/routes": ("edge",),
}
_PREFIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inst/", ("agent",)),
    ("intents/", ("reconciler",)),
    ("routes/", ("reconciler",)),
    ("secrets/", ("reconciler",)),
)
CERT_PREFIX = "certs/"


def may_write(role: str, name: str, owner: str, key: str) -> bool:
    """Whether identity ``role``/``name`` may publish ``key`` as fabric member ``owner``."""
    if not owner_matches(name, owner):
        return False
    if key.startswith(CERT_PREFIX):
        return role in _MEMBER_OWN and key[len(CERT_PREFIX) :] == name
    roles = _EXACT.get(key)
    if roles is None:
        for prefix, allowed in _PREFIX:
            if key.startswith(prefix):
                roles = allowed
                break
    return roles is not None and role in roles


def access_of(role: str, access: str | None) -> Access | None:
    """The HTTP access of a verified identity: a person's own level; ``viewer`` for members."""
    if role == "operator":
        if access == "admin":
            return "admin"
        return "operator" if access == "operator" else "viewer"
    if role in _MEMBER_OWN:
        return "viewer"
    return None


def allows(have: str | None, need: Access) -> bool:
    """Whether access level ``have`` is at least ``need``."""
    if have not in ACCESS_LEVELS:
        return False
    return ACCESS_LEVELS.index(have) >= ACCESS_LEVELS.index(need)


# HTTP routes: what each (method, route) needs. One table for every server of the mesh (the
# agent API, the reconciler's repo and control API, their dashboards and metrics); a route
# an application registers without a row here is refused at start-up
# (:mod:`.httpauth`). HEAD is checked as GET.
#
#   public    anybody (the handler authenticates by itself, e.g. a join token)
#   member    a member certificate (agent, edge or reconciler): peer spore fetch, renewal
#   viewer    any verified identity: people of every access level, and members
#   operator  people with operator or admin access
#   admin     people with admin access

Need = Literal["public", "member", "viewer", "operator", "admin"]

ROUTE_ACCESS: dict[tuple[str, str], Need] = {
    # the agent API
    ("GET", "/v1/node"): "viewer",
    ("GET", "/v1/instances"): "viewer",
    ("GET", "/v1/fabric"): "viewer",
    ("GET", "/v1/logs/{instance}"): "viewer",
    # spores: the reconciler's repo and every agent (for its peers)
    ("GET", "/spores/{digest}"): "member",
    # the reconciler's control API
    ("GET", "/v1/status"): "viewer",
    ("GET", "/v1/apps/{app}/history"): "viewer",
    ("POST", "/v1/apps/{app}/{verb}"): "operator",  # suspend, resume, rollback
    ("POST", "/v1/nodes/{node}/{verb}"): "operator",  # drain, undrain
    # certificates (the reconciler)
    ("POST", "/v1/enrol"): "public",  # the handler checks the one-time join token
    ("POST", "/v1/renew"): "member",
    ("POST", "/v1/revoke"): "admin",
    # observe, on every member
    ("GET", "/metrics"): "viewer",
    ("GET", "/ui"): "public",  # the page and its static files hold no data
    ("GET", "/ui/"): "public",
    ("GET", "/ui/static/{name}"): "public",
    ("GET", "/ui/status"): "viewer",
    ("GET", "/ui/events"): "viewer",
}


def route_need(method: str, route: str) -> Need | None:
    """What ``method`` on ``route`` (aiohttp's canonical form, e.g. ``/v1/nodes/{node}/{verb}``)
    needs; None if the table has no row (such a route is never served)."""
    m = method.upper()
    return ROUTE_ACCESS.get(("GET" if m == "HEAD" else m, route))


def permits(role: str | None, access: str | None, need: Need) -> bool:
    """Whether a caller may use a route that needs ``need``: ``role`` is a certificate's
    role (None for a bearer token), ``access`` its HTTP access (:func:`access_of`)."""
    if need == "public":
        return True
    if need == "member":
        return role in _MEMBER_OWN
    return allows(access, need)
