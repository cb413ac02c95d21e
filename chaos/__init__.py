"""The chaos run: a steady load of orders and cancels through both gateways while faults are injected
at random from a seed, then a drain and a Jepsen-style check of every operation (docs/chaos.md).

    system.py   two replicas of each service and two gateways, some behind TCP relays
    faults.py   the faults the tests know, planned from the seed and injected, each undone
    load.py     the clients: customers, orders and cancels at a steady rate, retried with their keys
    history.py  every operation and its outcome: ok, failed or unknown
    check.py    the history against the databases: lost, doubled, phantom; the time to decide
    run.py      the whole run and its summary

    python -m chaos --duration 600 [--seed N] [--rate R]      (make chaos DURATION=600 [SEED=N])
"""
