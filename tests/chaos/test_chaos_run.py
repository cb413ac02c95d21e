"""A short chaos run (chaos/, docs/chaos.md) on the suite's own servers: orders and cancels through
two gateways while RabbitMQ stops, Postgres restarts and crashes, replicas are killed and frozen and
connections are cut; then every operation is held to its outcome and I1 to I4 are checked.

The seed is fixed, so the faults are the same on every run: its plan holds every kind of fault,
orders_service killed and frozen for longer than a client waits (so that clients try again, on the
other gateway, orders that will yet be placed), and users_service killed and frozen. The timing of
the load around them is not fixed (real processes on a shared machine), so a failure names its seed
and what broke: `make chaos DURATION=45 SEED=182` replays the same faults.

It fails when a protection is taken away: without the Idempotency-Key's claim
(orders_service/services.py), the retries place some orders twice ("doubled"); with the consumer
acking before its commit (shared/consumer.py), an event killed in flight is never applied (I4).
"""

from pathlib import Path

from chaos.faults import FaultKind
from chaos.history import Kind, Outcome
from chaos.run import Settings, chaos_run
from devstack.servers import Servers

SEED = 182  # replayed by `make chaos DURATION=45 SEED=182`
DURATION = 45.0


async def test_a_short_chaos_run_loses_nothing_and_doubles_nothing(
    fault_servers: Servers, tmp_path: Path
) -> None:
    summary = await chaos_run(fault_servers, tmp_path, Settings(duration=DURATION, seed=SEED))

    # The run was a real one: every kind of fault, and orders placed and cancelled under them.
    assert all(summary.faults[kind] for kind in FaultKind), summary.faults
    assert summary.operations[(Kind.PLACE, Outcome.OK)] >= 100, summary.operations
    assert summary.operations[(Kind.CANCEL, Outcome.OK)] >= 20, summary.operations

    details = "\n".join(summary.lines())
    assert summary.lost == summary.doubled == summary.phantom == 0, details
    assert not summary.violations, details
    assert not any(summary.still_in_flight.values()), details
    assert not summary.unclean_exits, details
    assert summary.passed
