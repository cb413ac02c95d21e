"""The invariant checker the end-to-end tests end with: devstack/invariants.py, which the chaos run
(chaos/) uses too."""

from devstack.invariants import SystemState, assert_invariants_once_quiet, read_state, violations

__all__ = ["SystemState", "assert_invariants_once_quiet", "read_state", "violations"]
