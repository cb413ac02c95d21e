"""Which client a request's limits belong to, with and without trusted proxies in front."""

import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import GatewayConfig
from gateway.edge import Network, client_address
from shared.config import ConfigError

INGRESS: tuple[Network, ...] = (ipaddress.ip_network("10.0.0.0/8"),)


def address(peer: str, *forwarded_for: str, trusted: tuple[Network, ...] = INGRESS) -> str:
    headers = [("X-Forwarded-For", value) for value in forwarded_for]
    request = make_mocked_request("GET", "/api/orders", headers=headers, transport=_Transport(peer))
    return client_address(request, trusted)


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_claims() -> None:
    assert address("203.0.113.7", "198.51.100.1", trusted=()) == "203.0.113.7"


def test_a_header_from_an_untrusted_peer_is_ignored() -> None:
    assert address("203.0.113.7", "198.51.100.1") == "203.0.113.7"


def test_behind_a_trusted_proxy_the_client_is_the_address_the_proxy_saw() -> None:
    assert address("10.1.2.3", "198.51.100.1") == "198.51.100.1"


def test_entries_a_client_wrote_itself_are_not_believed() -> None:
    # The client sent "X-Forwarded-For: 192.0.2.66" hoping to borrow another's limit; the ingress
    # appended the address it really saw.
    assert address("10.1.2.3", "192.0.2.66, 198.51.100.1") == "198.51.100.1"
    assert address("10.1.2.3", "192.0.2.66", "198.51.100.1") == "198.51.100.1"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    assert address("10.1.2.3", "198.51.100.1, 10.9.9.9") == "198.51.100.1"


def test_when_every_hop_is_trusted_the_peer_stands_for_the_client() -> None:
    assert address("10.1.2.3", "10.4.4.4") == "10.1.2.3"
    assert address("10.1.2.3") == "10.1.2.3"


def test_a_malformed_network_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        GatewayConfig.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, not-a-network"})
    assert GatewayConfig.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"}).trusted_proxy_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
