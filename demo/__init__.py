"""`make demo`: a scripted tour of the running system, through its public API and its broker.

Two users register and sign in; one order is approved, one rejected for credit, one cancelled with
its credit released; a poison message is dead-lettered, replayed, and dead-lettered again. Each step
prints as a row of a table as it completes, and the end names the flow page and the correlation ids
to filter it by. Run it as `python -m demo` (`--help` for its options).
"""
