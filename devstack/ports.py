"""Free TCP ports on this machine's loopback interface."""

import socket


def free_port() -> int:
    """A port that nothing listens on right now. Another process could take it before the caller
    binds it; on a machine that is not short of ports, that does not happen in practice."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
