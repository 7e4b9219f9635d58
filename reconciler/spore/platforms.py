"""Platform tags: what a dependency build's output runs on (``build.platform`` in a manifest).

* ``"any"``: pure code (no compiled extension): runs on every host;
* ``cp311-manylinux_x86_64``: a Python build holding compiled extensions (``*.so``) for this
  interpreter (implementation + major/minor) and this OS/CPU (``musllinux`` on musl);
* ``node20-linux_x64``: a Node build holding native addons (``*.node``) for this Node major,
  OS and CPU (Node's own ``process.platform``/``process.arch`` words).

The tags are formatted here, once, from what an interpreter says about itself
(:func:`python_tag`, :func:`node_tag`): the builder asks its own interpreter and the
``node`` on ``PATH``; agents probe the workloads' ``python3`` and ``node`` with the same
probes (``reconciler/agent/platform.py``) and list what they run in
``NodeRecord.platforms``.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import sys
import sysconfig
from typing import Any

ANY = "any"

_IMPL = {"cpython": "cp", "pypy": "pp"}

#: asks a python3 about itself (one line of JSON): what :func:`python_tag` reads
PYTHON_PROBE = (
    "import json, platform, sys, sysconfig;"
    "print(json.dumps({'impl': sys.implementation.name,"
    " 'version': list(sys.version_info[:2]),"
    " 'machine': platform.machine(),"
    " 'libc': platform.libc_ver()[0],"
    " 'gil_disabled': bool(sysconfig.get_config_var('Py_GIL_DISABLED'))}))"
)
#: asks node about itself (one line of JSON): what :func:`node_tag` reads
NODE_PROBE = (
    "console.log(JSON.stringify({version: process.versions.node,"
    " platform: process.platform, arch: process.arch}))"
)


def libc_family(libc: str) -> str:
    """``manylinux`` for glibc, ``musllinux`` for musl (``platform.libc_ver()[0]`` is ""
    there), as the wheel tags spell them."""
    return "manylinux" if libc.lower() == "glibc" else "musllinux"


def python_tag(info: dict[str, Any]) -> str:
    """``cp311-manylinux_x86_64`` from what :data:`PYTHON_PROBE` prints; "" if unusable."""
    impl = _IMPL.get(str(info.get("impl", "")), str(info.get("impl", ""))[:2])
    version = info.get("version")
    machine = str(info.get("machine", "")).lower()
    if not impl or not machine or not isinstance(version, list) or len(version) != 2:
        return ""
    major, minor = version
    threaded = "t" if info.get("gil_disabled") else ""
    return f"{impl}{major}{minor}{threaded}-{libc_family(str(info.get('libc', '')))}_{machine}"


def node_tag(info: dict[str, Any]) -> str:
    """``node20-linux_x64`` from what :data:`NODE_PROBE` prints; "" if unusable."""
    major = str(info.get("version", "")).lstrip("v").split(".", 1)[0]
    plat, arch = str(info.get("platform", "")), str(info.get("arch", ""))
    if not major.isdigit() or not plat or not arch:
        return ""
    return f"node{major}-{plat}_{arch}"


@functools.cache
def python_platform() -> str:
    """This interpreter's tag, e.g. ``cp311-manylinux_x86_64`` (``t`` after the version for
    a free-threaded build; ``musllinux`` off glibc)."""
    info = {
        "impl": sys.implementation.name,
        "version": list(sys.version_info[:2]),
        "machine": platform.machine(),
        "libc": platform.libc_ver()[0],
        "gil_disabled": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    }
    return python_tag(info)


@functools.cache
def node_platform(node: str = "node") -> str:
    """The tag of ``node`` on this host, e.g. ``node20-linux_x64``; "" if there is none."""
    try:
        out = subprocess.run(
            [node, "-e", NODE_PROBE], capture_output=True, text=True, timeout=30, check=True
        )
        info = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ""
    return node_tag(info) if isinstance(info, dict) else ""


def target_platform(kind: str) -> str:
    """The tag a build of ``kind`` made on this host would carry if it held compiled code
    (part of a build's inputs: the same lock built on another platform is another build)."""
    if kind == "node":
        return node_platform() or "node-missing"
    return python_platform()
