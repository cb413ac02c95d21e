"""Which client a request's limits belong to, with and without trusted proxies in front."""

import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import GatewayConfig
from gateway.edge import Network, client_address
from shared.config import ConfigError
from shared.http import address_bucket, forwarded_client

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


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same /64: the same client
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64: another one
        ("2001:DB8:1:2:0:0:0:1", "2001:db8:1:2::/64"),  # however it is written
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        ("::1", "::/64"),
        ("unknown", "unknown"),
    ],
)
def test_an_ipv6_client_is_its_64_and_an_ipv4_client_its_address(address: str, bucket: str) -> None:
    assert address_bucket(address) == bucket


def test_a_service_takes_the_client_the_gateway_found_or_else_the_peer() -> None:
    def forwarded(*headers: tuple[str, str]) -> str:
        request = make_mocked_request(
            "POST", "/api/auth/token", headers=list(headers), transport=_Transport("10.1.2.3")
        )
        return forwarded_client(request)

    assert forwarded(("X-Forwarded-For", "203.0.113.7")) == "203.0.113.7"
    assert forwarded(("X-Forwarded-For", "2001:db8::1")) == "2001:db8::1"
    assert forwarded() == "10.1.2.3"
    assert forwarded(("X-Forwarded-For", "not an address")) == "10.1.2.3"
    assert forwarded(("X-Forwarded-For", "203.0.113.7, 10.0.0.1")) == "10.1.2.3"  # the gateway sets one
