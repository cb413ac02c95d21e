"""The Ed25519 key pair that signs and verifies access tokens, made where a stack's files live."""

import dataclasses
from pathlib import Path

from users_service.keygen import ensure_keypair


@dataclasses.dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_key_pair(directory: Path) -> KeyPair:
    pair = KeyPair(private=directory / "jwt-private.pem", public=directory / "jwt-public.pem")
    ensure_keypair(pair.private, pair.public)
    return pair
