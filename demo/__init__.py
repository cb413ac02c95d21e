"""`make demo`: a scripted tour of the running system, through its public API and its broker.

A look at the catalogue; two users register (with the policy's credit limit) and sign in; one order
is approved, one rejected for credit, one cancelled with its credit released, all priced by the
catalogue. An operator makes a third user an admin for the run (python -m users_service.admin, with
users_service's database), who raises the limit that refused an order, and that order goes through.
A client of version 1 (deprecated) is served and told so. A poison message is dead-lettered,
replayed, and dead-lettered again. Each step prints as a row of a table as it completes, and the
end names the flow page and the correlation ids to filter it by. Run it as `python -m demo`
(`--help` for its options).
"""
