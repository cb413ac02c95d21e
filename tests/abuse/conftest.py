"""The abuse table runs against the real processes, through the gateway: the end-to-end fixtures,
shared, not copied (`stack` for attacks that leave nothing behind, `fresh_stack` for the others)."""

from tests.e2e.conftest import fresh_stack, http, stack

__all__ = ["fresh_stack", "http", "stack"]
