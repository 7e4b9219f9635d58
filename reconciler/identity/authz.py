"""Who may do what: the fabric's write table and the HTTP access table. Pure.

Fabric records (a compromised host can lie only about itself)::

    key                                      writer
    node                                     its own member (agent, edge or reconciler)
    certs/<name>                             the member whose certificate name is <name>
    inst/<id>                                an agent (its own instances)
    intents/<node>, routes/<app>, lease,
    garden, revocations, secrets/<node>/...  a reconciler
    edge/stats                               an edge

Every record's owner (the fabric member that publishes it) must also be the writer's
certificate name, or that name followed by ``#`` and a suffix (:func:`~.names.owner_matches`).

HTTP: a person's access is ``viewer`` < ``operator`` < ``admin``; members (agents, edges,
reconcilers) may read (viewer) and fetch spores, never change state.
"""

from __future__ import annotations

from .names import ACCESS_LEVELS, Access, owner_matches

_MEMBER_OWN = ("agent", "edge", "reconciler")

_EXACT: dict[str, tuple[str, ...]] = {
    "node": _MEMBER_OWN,
    "lease": ("reconciler",),
    "garden": ("reconciler",),
    "revocations": ("reconciler",),
    "edge/stats": ("edge",),
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
