"""Issuing access tokens. This is the only module of the system that touches the private key."""

import dataclasses
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shared.auth import ALGORITHM, ROLES_CLAIM, TOKEN_TYPE, key_id


@dataclasses.dataclass(frozen=True)
class TokenIssuer:
    private_key: Ed25519PrivateKey = dataclasses.field(repr=False)  # never in a repr, log or traceback
    issuer: str
    audience: str
    ttl_seconds: int
    # The `kid` of every token: the thumbprint of the public half, which verifiers look keys up by.
    key_id: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id(self.private_key.public_key()))

    @classmethod
    def from_pem_file(
        cls, path: str | Path, *, issuer: str, audience: str, ttl_seconds: int
    ) -> "TokenIssuer":
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(private_key=key, issuer=issuer, audience=audience, ttl_seconds=ttl_seconds)

    def issue(self, user_id: uuid.UUID, roles: Iterable[str] = ()) -> str:
        """A signed access token for `user_id`, granting `roles` until it expires: a role granted
        or revoked later takes effect with the user's next token (within JWT_TTL_SECONDS)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            ROLES_CLAIM: sorted(set(roles)),
        }
        return jwt.encode(
            claims,
            self.private_key,
            algorithm=ALGORITHM,
            headers={"typ": TOKEN_TYPE, "kid": self.key_id},
        )
