"""gateway: the only public entry; routes by a fixed table, verifies tokens, bounds every call."""
