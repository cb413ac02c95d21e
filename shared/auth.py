"""Verifying access tokens: Ed25519-signed JWTs issued by users_service.

Every process that receives a request verifies the token itself with the public key (defence in
depth: the services do not trust that the gateway checked). Only users_service holds the private key.
"""

import dataclasses
import uuid
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from shared.problems import unauthorized

ALGORITHM = "EdDSA"  # pinned: a token signed with anything else (none, HS256, RS256) is refused
TOKEN_TYPE = "at+jwt"  # RFC 9068: marks the JWT as an access token, not an ID token or other JWT
CLOCK_LEEWAY_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class TokenVerifier:
    public_key: Ed25519PublicKey
    issuer: str
    audience: str

    @classmethod
    def from_pem_file(cls, path: str | Path, *, issuer: str, audience: str) -> "TokenVerifier":
        key = load_pem_public_key(Path(path).read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} does not hold an Ed25519 public key")
        return cls(public_key=key, issuer=issuer, audience=audience)

    def user_id(self, token: str) -> uuid.UUID:
        """The verified subject of `token`, or a 401 problem saying (briefly) what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != TOKEN_TYPE:
                raise unauthorized("The token is not an access token.")
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
            return uuid.UUID(claims["sub"])
        except jwt.ExpiredSignatureError:
            raise unauthorized("The token has expired.") from None
        except (jwt.InvalidTokenError, ValueError):
            raise unauthorized("The token is invalid.") from None

    def user_id_from_request(self, request: web.Request) -> uuid.UUID:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Send an access token as `Authorization: Bearer <token>`.")
        return self.user_id(token.strip())


TOKEN_VERIFIER = web.AppKey("token_verifier", TokenVerifier)
AUTHENTICATED_USER = web.RequestKey("authenticated_user", uuid.UUID)
