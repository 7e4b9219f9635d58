"""``myco edge``: the ingress router (docs/edge.md).

Identity: ``--identity DIR`` (an edge certificate; got once with ``--join-token FILE --enrol
URL --ca DIR`` if the directory is empty). Gossip, and ``--metrics-listen``, off loopback
need one unless ``--insecure``; the proxy's own ``--listen`` is the public ingress and needs
none.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.commands.options import (
    add_fabric,
    add_identity,
    has_identity,
    identity_spec,
    join_settings,
    refuse_plaintext,
    refuse_unsigned_gossip,
)
from reconciler.errors import UsageError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "edge",
        parents=[common],
        help="run the edge router: proxy /{app}/... to the app's live backends",
        description=(
            "Join the control fabric, read the route table (routes/<app>) and proxy "
            "/{app}/rest to the app's backends with the prefix stripped."
        ),
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="ADDR",
        help="HTTP address to serve on (default 127.0.0.1:8080)",
    )
    add_fabric(p)  # --join --gossip-bind --advertise --gossip-key --cluster --profile
    add_identity(p, "edge")  # --identity --join-token --enrol --ca
    p.add_argument(
        "--name",
        default="",
        help="fabric member name (default: the certificate's name with --identity, "
        "else edge-<host>-<pid>)",
    )
    p.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="APP=HOST:PORT[*W],...",
        help="a fixed route instead of the fabric's (repeatable; for tests, benchmarks)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT (default 1)",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop if installed (auto), or force one",
    )
    p.add_argument(
        "--server",
        choices=("fast", "aiohttp"),
        default="fast",
        help="client-facing HTTP server: httptools protocol (fast, default) or aiohttp's",
    )
    p.add_argument("--connect-timeout", type=float, default=2.0, metavar="S")
    p.add_argument("--read-timeout", type=float, default=30.0, metavar="S")
    p.add_argument(
        "--total-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="limit on a whole exchange, 0 for none (default 300)",
    )
    p.add_argument(
        "--client-header-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a client must send a whole request head within this, else 408 (default 60)",
    )
    p.add_argument(
        "--client-body-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="longest wait for the next byte of a request body (default 60)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=75.0,
        metavar="S",
        help="close an idle keep-alive client connection after this (default 75)",
    )
    p.add_argument(
        "--tunnel-idle-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="close a WebSocket/upgrade tunnel idle both ways this long, 0 for never (default 300)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="open client connections per worker; at the cap, accepting waits (default 1024)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="other backends one request may try after the first (default 2)",
    )
    p.add_argument("--eject-after-5xx", type=int, default=5, metavar="N")
    p.add_argument(
        "--eject-for",
        type=float,
        default=5.0,
        metavar="S",
        help="base ejection time of a failing backend (default 5)",
    )
    p.add_argument("--stats-interval", type=float, default=10.0, metavar="S")
    p.add_argument("--shutdown-grace", type=float, default=10.0, metavar="S")
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="ADDR",
        help="serve /metrics (and the /ui dashboard) on this address (default: off)",
    )
    p.add_argument(
        "--data-plane",
        choices=("python", "haproxy"),
        default="python",
        help="who proxies: this process (python, default) or a local HAProxy it programs "
        "through its runtime API (then --workers is HAProxy's thread count)",
    )
    p.add_argument(
        "--state",
        default="",
        metavar="DIR",
        help="the HAProxy data plane's config, map and runtime socket (default: a temp dir)",
    )
    p.set_defaults(func=run_edge_cmd)


def run_edge_cmd(args: argparse.Namespace) -> int:
    from reconciler.addr import parse_addr
    from reconciler.edge.config import (
        ClientLimits,
        EdgeConfig,
        EjectionPolicy,
        RetryPolicy,
        Timeouts,
    )
    from reconciler.edge.process import EdgeRunSpec, run
    from reconciler.edge.source import parse_static_route

    if not args.join and not args.route:
        raise UsageError("edge: give --join ADDR... (the fabric) or --route APP=HOST:PORT")
    if args.join and args.route:
        raise UsageError("edge: --join and --route exclude each other")
    if args.workers < 1:
        raise UsageError("edge: --workers must be at least 1")
    if args.retries < 0:
        raise UsageError("edge: --retries must be 0 or more")
    if args.data_plane == "haproxy":
        from reconciler.edge.haproxy import find_haproxy

        find_haproxy()  # one clear error before anything starts
    join = join_settings(args, "edge") if args.join else None
    identity = identity_spec(
        "edge",
        identity=args.identity,
        default_dir=None,
        join_token=args.join_token,
        enrol=args.enrol,
        ca=args.ca,
        loopback_http=args.loopback_http,
        listeners=(("--metrics-listen", args.metrics_listen),) if args.metrics_listen else (),
    )
    if identity is not None and join is None:
        raise UsageError("edge: --identity is for an edge in the fabric (--join)")
    secured = has_identity(identity)
    if join is not None:
        refuse_unsigned_gossip("edge", join, secured=secured)
    host, port = parse_addr(args.listen)
    if args.metrics_listen:
        parse_addr(args.metrics_listen, what="--metrics-listen")
        refuse_plaintext(
            "edge",
            "--metrics-listen",
            args.metrics_listen,
            secured=secured,
            insecure=bool(args.insecure),
        )
    config = EdgeConfig(
        host=host,
        port=port,
        timeouts=Timeouts(args.connect_timeout, args.read_timeout, args.total_timeout),
        ejection=EjectionPolicy(
            consecutive_5xx=args.eject_after_5xx,
            base_s=args.eject_for,
            max_s=max(60.0, args.eject_for),
        ),
        retry=RetryPolicy(max_attempts=1 + args.retries),
        client=ClientLimits(
            header_s=args.client_header_timeout,
            body_s=args.client_body_timeout,
            keepalive_s=args.keepalive_timeout,
            tunnel_idle_s=args.tunnel_idle_timeout,
            max_connections=args.max_connections,
        ),
        stats_interval_s=args.stats_interval,
        shutdown_grace_s=args.shutdown_grace,
        server=args.server,
    )
    spec = EdgeRunSpec(
        config=config,
        join=join,
        name=args.name,
        static_routes=tuple(parse_static_route(r) for r in args.route),
        workers=args.workers,
        loop=args.loop,
        verbosity=args.verbose,
        log_format=args.log_format,
        metrics_listen=args.metrics_listen,
        data_plane=args.data_plane,
        state_dir=args.state,
        identity=identity,
    )
    return run(spec)
