"""bench.edge's wrk parser and target checks, on captured wrk outputs (no wrk needed)."""

from __future__ import annotations

import pytest

from bench.edge import ERROR_KINDS, checks, choose_pinning, parse_wrk

CLEAN = """Running 5s test @ http://127.0.0.1:40001/bench/hello
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  420.12us   9.80ms   88.12%
    Req/Sec    27.80k     1.10k   29.40k    80.00%
  Latency Distribution
     50%    2.25ms
     75%    2.41ms
     90%    2.66ms
     99%    3.90ms
  138312 requests in 5.00s, 25.19MB read
Requests/sec:  27662.40
Transfer/sec:      5.04MB
"""

ERRORS = """Running 10s test @ http://127.0.0.1:40002/bench/hello
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   850.00us    1.20ms   1.01s    99.10%
    Req/Sec    30.10k     2.00k   33.00k    70.00%
  Latency Distribution
     50%  612.00us
     75%  790.00us
     90%    1.10ms
     99%    1.02s
  301000 requests in 10.00s, 54.80MB read
  Socket errors: connect 3, read 17, write 2, timeout 5
  Non-2xx or 3xx responses: 41
Requests/sec:  30099.10
Transfer/sec:      5.48MB
"""

ONLY_STATUS = CLEAN.replace(
    "  138312 requests in 5.00s, 25.19MB read\n",
    "  138312 requests in 5.00s, 25.19MB read\n  Non-2xx or 3xx responses: 9\n",
)


def test_a_clean_run_has_its_figures_and_no_error() -> None:
    load = parse_wrk(CLEAN)
    assert (load.rps, load.requests) == (27662.40, 138312)
    assert (load.p50_ms, load.p99_ms) == (2.25, 3.90)
    assert load.errors == dict.fromkeys(ERROR_KINDS, 0)
    assert load.error_total == 0


def test_every_error_kind_is_counted() -> None:
    load = parse_wrk(ERRORS)
    assert load.errors == {"connect": 3, "read": 17, "write": 2, "timeout": 5, "status": 41}
    assert load.error_total == 68
    assert load.p50_ms == pytest.approx(0.612)
    assert load.p99_ms == pytest.approx(1020.0)  # seconds read as such


def test_non_2xx_answers_alone_are_counted() -> None:
    load = parse_wrk(ONLY_STATUS)
    assert load.errors["status"] == 9
    assert load.error_total == 9


def test_an_output_without_a_summary_is_refused() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_checks_say_met_missed_or_not_measured() -> None:
    result = {
        "python": {"ratio": 0.5, "p99_added_ms": 1.4},
        "haproxy": {"skipped": "haproxy is not installed"},
        "hardening": {"slow_heads_closed_s": 5.6, "served_p99_ms_during": 3.0},
    }
    got = checks(result)
    assert got["python.ratio"] is True
    assert got["python.p99_added_ms"] is False
    assert got["haproxy.ratio"] is None
    assert got["haproxy.route_change_failed_requests"] is None
    assert got["hardening.slow_heads_closed_s"] is True
    assert got["hardening.served_p99_ms_during"] is True
    failed = checks({"haproxy": {"route_change_failed_requests": 1}})
    assert failed["haproxy.route_change_failed_requests"] is False


def test_pinning_gives_the_proxy_its_own_cpu() -> None:
    assert not choose_pinning(1, True).active
    assert not choose_pinning(4, False).active
    two = choose_pinning(2, True)
    assert (two.proxy, two.rest) == ("0", "1")
    assert two.wrap(["wrk"], "rest") == ["taskset", "-c", "1", "wrk"]
    assert two.wrap(["nginx"], "proxy") == ["taskset", "-c", "0", "nginx"]
    assert choose_pinning(8, True).rest == "1-7"
