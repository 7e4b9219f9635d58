"""The lease over an in-memory fabric: one active out of many, claims, expiry, step-down."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from reconciler.clock import RealClock, VirtualClock
from reconciler.fabric import Fabric, MemoryNetwork, open_memory_fabric
from reconciler.reconcile.lease import Lease, LeaseConfig
from reconciler.records import KEY_LEASE, LeaseRecord
from tests.helpers import async_wait_for

CFG = LeaseConfig(ttl_s=3.0, renew_s=1.0, settle_s=0.5)


@pytest.fixture
async def fabrics() -> AsyncIterator[list[Fabric]]:
    net = MemoryNetwork(RealClock())
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_memory_fabric("r0", net))
        out = [first]
        for i in (1, 2):
            out.append(
                await stack.enter_async_context(open_memory_fabric(f"r{i}", net, [first.addr]))
            )
        yield out


def converged(fabrics: list[Fabric], leases: list[Lease]) -> bool:
    """Every member sees every lease record as it was published."""
    for lease in leases:
        mine = lease.fabric.get(lease.fabric.name, KEY_LEASE)
        if any(f.get(lease.fabric.name, KEY_LEASE) != mine for f in fabrics):
            return False
    return True


async def settle(
    fabrics: list[Fabric], leases: list[Lease], clock: VirtualClock, dt: float
) -> None:
    for lease in leases:
        lease.step()
    await async_wait_for(lambda: converged(fabrics, leases), what="lease records spread")
    clock.advance(dt)


async def test_one_active_claims_expiry_and_step_down(fabrics: list[Fabric]) -> None:
    clock = VirtualClock(wall_start=1000.0)  # the leases' wall time only
    leases = [Lease(f, CFG, wall=clock.wall) for f in fabrics]
    # All claim at once (the same epoch); after settle_s the highest name wins.
    for _ in range(4):
        await settle(fabrics, leases, clock, 0.3)
    active = [lease for lease in leases if lease.active]
    assert [lease.fabric.name for lease in active] == ["r2"]
    assert active[0].epoch == 1
    assert all(lease.holder == "r2" for lease in leases)
    # The holder renews; standbys stay standbys for as long as it does.
    for _ in range(10):
        await settle(fabrics, leases, clock, 0.9)
    assert [lease.active for lease in leases] == [False, False, True]
    # The holder stops renewing (hung): after ttl_s a new epoch is claimed and won.
    for _ in range(10):
        await settle(fabrics, leases[:2], clock, 0.5)
    assert [lease.active for lease in leases[:2]] == [False, True]
    assert leases[1].epoch == 2
    # The old holder wakes up, sees a newer holder and steps down at once.
    leases[2].step()
    assert not leases[2].active
    assert leases[2].holder == "r1"


async def test_a_claim_is_above_every_epoch_ever_seen(fabrics: list[Fabric]) -> None:
    clock = VirtualClock(wall_start=1000.0)  # the leases' wall time only
    old = LeaseRecord("gone", 41, clock.wall() - 100)  # expired, from a past reconciler
    fabrics[0].publish(KEY_LEASE, old.to_json())  # type: ignore[arg-type]
    lease = Lease(fabrics[1], CFG, wall=clock.wall)
    await async_wait_for(lambda: fabrics[1].get("r0", KEY_LEASE) is not None, what="spread")
    lease.step()
    clock.advance(1.0)
    lease.step()
    assert lease.active
    assert lease.epoch == 42
    lease.release()
    assert not lease.active
    assert fabrics[1].get("r1", KEY_LEASE) is None
