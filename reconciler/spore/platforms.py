"""Platform tags: what a dependency build's output runs on (``build.platform`` in a manifest).

* ``"any"``: pure code (no compiled extension): runs on every host;
* ``cp311-manylinux_x86_64``: a Python build holding compiled extensions (``*.so``) for this
  interpreter (implementation + major/minor) and this OS/CPU (``musllinux`` on musl);
* ``node20-linux_x64``: a Node build holding native addons (``*.node``) for this Node major,
  OS and CPU (Node's own ``process.platform``/``process.arch`` words).

The builder host's tags are computed here, simply, from the running interpreter and the
``node`` on ``PATH``; agents list the tags they run (``NodeRecord.platforms``) with
:func:`host_platforms`.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
import sysconfig

ANY = "any"

_IMPL = {"cpython": "cp", "pypy": "pp"}


@functools.cache
def python_platform() -> str:
    """This interpreter's tag, e.g. ``cp311-manylinux_x86_64`` (``t`` after the version for
    a free-threaded build; ``musllinux`` off glibc): the words agents use for their hosts
    (``reconciler/agent/platform.py`` formats the same tag from its probe)."""
    impl = _IMPL.get(sys.implementation.name, sys.implementation.name[:2])
    threaded = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    version = f"{sys.version_info.major}{sys.version_info.minor}{threaded}"
    family = "manylinux" if platform.libc_ver()[0].lower() == "glibc" else "musllinux"
    return f"{impl}{version}-{family}_{platform.machine().lower()}"


@functools.cache
def node_platform(node: str = "node") -> str:
    """The tag of ``node`` on this host, e.g. ``node20-linux_x64``; "" if there is none."""
    script = "const v=process.versions.node.split('.')[0];"
    script += "console.log(`node${v}-${process.platform}_${process.arch}`)"
    try:
        out = subprocess.run(
            [node, "-e", script], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def host_platforms() -> tuple[str, ...]:
    """Every tag this host can run: ``any``, its Python's, and its Node's if it has one."""
    tags = [ANY, python_platform()]
    if node := node_platform():
        tags.append(node)
    return tuple(tags)


def target_platform(kind: str) -> str:
    """The tag a build of ``kind`` made on this host would carry if it held compiled code
    (part of a build's inputs: the same lock built on another platform is another build)."""
    if kind == "node":
        return node_platform() or "node-missing"
    return python_platform()
