"""Who a member is: roles, names and the SPIFFE-style URI that carries them in a certificate.

A member certificate names exactly one identity, ``spiffe://<mesh>/<role>/<name>``, in its
URI subject alternative name. ``name`` is a host or person name: letters, digits, ``.``,
``_`` and ``-`` (no ``#``: a fabric member name is the certificate name, optionally followed
by ``#`` and a suffix, e.g. one per edge worker or per reconciler process).
"""

from __future__ import annotations

import re
from typing import Literal

from reconciler.errors import IdentityError

Role = Literal["agent", "edge", "reconciler", "operator"]
ROLES: tuple[Role, ...] = ("agent", "edge", "reconciler", "operator")
MEMBER_ROLES: tuple[Role, ...] = ("agent", "edge", "reconciler")

# What a person (operator certificate or bearer token) may do over HTTP, lowest first.
Access = Literal["viewer", "operator", "admin"]
ACCESS_LEVELS: tuple[Access, ...] = ("viewer", "operator", "admin")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MESH = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
SCHEME = "spiffe://"


def check_name(name: str, what: str = "name") -> str:
    if not _NAME.match(name):
        raise IdentityError(
            f"{what} {name!r} is not valid: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_mesh(mesh: str) -> str:
    if not _MESH.match(mesh):
        raise IdentityError(f"mesh name {mesh!r} is not valid: lower-case DNS-like, 1-63 chars")
    return mesh


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise IdentityError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_access(access: str) -> Access:
    if access not in ACCESS_LEVELS:
        raise IdentityError(f"unknown access {access!r}: one of {', '.join(ACCESS_LEVELS)}")
    return access


def spiffe_id(mesh: str, role: str, name: str) -> str:
    return f"{SCHEME}{check_mesh(mesh)}/{check_role(role)}/{check_name(name)}"


def parse_spiffe(uri: str) -> tuple[str, Role, str]:
    """``(mesh, role, name)`` of a member URI; :class:`IdentityError` if it is not one."""
    if not uri.startswith(SCHEME):
        raise IdentityError(f"not a mesh identity: {uri!r}")
    parts = uri[len(SCHEME) :].split("/")
    if len(parts) != 3:
        raise IdentityError(f"not a member identity: {uri!r}")
    mesh, role, name = parts
    return check_mesh(mesh), check_role(role), check_name(name)


def owner_matches(name: str, owner: str) -> bool:
    """Whether the fabric member ``owner`` may be the identity ``name`` (itself or ``name#…``)."""
    return owner == name or (owner.startswith(name) and owner[len(name) : len(name) + 1] == "#")


def member_name(cert_name: str, suffix: str = "") -> str:
    """The fabric member name of a process holding ``cert_name`` (``suffix``: e.g. ``w0``)."""
    return f"{cert_name}#{suffix}" if suffix else cert_name
