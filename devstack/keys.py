"""The Ed25519 key pair that signs and verifies access tokens, made where a stack's files live."""

import dataclasses
import uuid
from collections.abc import Iterable
from pathlib import Path

from shared.auth import ADMIN
from shared.config import ServiceConfig
from users_service.keygen import ensure_keypair
from users_service.tokens import TokenIssuer


@dataclasses.dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    def token(self, user_id: uuid.UUID, roles: Iterable[str] = (), *, ttl_seconds: int = 900) -> str:
        """An access token signed as users_service signs them (the default issuer and audience), for
        tests and tools that need one without signing in: an admin's, say, where none was granted."""
        issuer = TokenIssuer.from_pem_file(
            self.private,
            issuer=ServiceConfig.jwt_issuer,
            audience=ServiceConfig.jwt_audience,
            ttl_seconds=ttl_seconds,
        )
        return issuer.issue(user_id, roles)

    def admin_headers(self) -> dict[str, str]:
        """Authorization headers of an admin (a user id of its own, which no user row needs)."""
        return {"Authorization": f"Bearer {self.token(uuid.uuid4(), [ADMIN])}"}


def make_key_pair(directory: Path) -> KeyPair:
    pair = KeyPair(private=directory / "jwt-private.pem", public=directory / "jwt-public.pem")
    ensure_keypair(pair.private, pair.public)
    return pair
