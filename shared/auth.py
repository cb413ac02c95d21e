"""Verifying access tokens: Ed25519-signed JWTs issued by users_service (RFC 8725's rules).

Every process that receives a request verifies the token itself with the public key (defence in
depth: the services do not trust that the gateway checked). Only users_service holds the private key.

Keys rotate without downtime: every token names its signing key in the `kid` header (the RFC 7638
JWK thumbprint of the public key) and verifiers hold a key *set*. To rotate, add the new public key
to every verifier's set, switch users_service to the new private key, wait one token lifetime, then
drop the old public key from the set.
"""

import base64
import collections
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from shared.problems import unauthorized

ALGORITHM = "EdDSA"  # pinned: a token signed with anything else (none, HS256, RS256) is refused
TOKEN_TYPE = "at+jwt"  # RFC 9068: marks the JWT as an access token, not an ID token or other JWT
CLOCK_LEEWAY_SECONDS = 30  # tolerated clock skew between the issuer and a verifier, for exp and nbf
REQUIRED_CLAIMS = ["exp", "nbf", "iat", "iss", "aud", "sub"]
# RFC 9068 section 2.2.3.1: what the subject may do, as the roles the issuer granted it. A token
# without the claim grants none. The roles a service knows are named in its contract
# (`security: [{bearerAuth: [admin]}]`), which the OpenAPI middleware enforces (shared/openapi.py).
ROLES_CLAIM = "roles"
ADMIN = "admin"


def key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key: its `kid`."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    # RFC 7638 section 3.2: the required members only, sorted, no whitespace (RFC 8037 for OKP keys).
    members = {"crv": "Ed25519", "kty": "OKP", "x": _base64url(raw)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _base64url(hashlib.sha256(canonical).digest())


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except ValueError as error:  # a private key, say: say which file, as for any other key
        raise ValueError(f"{path} does not hold an Ed25519 public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} does not hold an Ed25519 public key")
    return key


def key_files(paths: str | Path) -> list[Path]:
    """The files of a `JWT_PUBLIC_KEY_FILE` value: one path, or several separated by commas."""
    files = [Path(part.strip()) for part in str(paths).split(",") if part.strip()]
    if not files:
        raise ValueError("no public key file given")
    return files


# Verifying an Ed25519 signature is most of what a gateway request costs; a client sends the same
# token for its whole lifetime. So a token that passed is remembered (bounded, oldest out first),
# and on a later request only its time window is checked again. Safe because the token string holds
# its signature, and this key set never changes while the process runs; nothing revokes a token
# early here (were that added, this cache must learn of it).
REMEMBERED_TOKENS = 10_000


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for, and the roles it grants them."""

    user_id: uuid.UUID
    roles: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class _Verified:
    principal: Principal
    not_before: float
    expires: float


@dataclasses.dataclass(frozen=True)
class TokenVerifier:
    keys: Mapping[str, Ed25519PublicKey]  # by kid; more than one while keys rotate
    issuer: str
    audience: str
    _verified: "collections.OrderedDict[str, _Verified]" = dataclasses.field(
        default_factory=collections.OrderedDict, compare=False, repr=False
    )

    @classmethod
    def from_pem_file(cls, paths: str | Path, *, issuer: str, audience: str) -> "TokenVerifier":
        """A verifier trusting the public keys in `paths`: one PEM file, or several separated by commas."""
        public_keys = [load_public_key(path) for path in key_files(paths)]
        return cls.from_keys(public_keys, issuer=issuer, audience=audience)

    @classmethod
    def from_keys(cls, public_keys: list[Ed25519PublicKey], *, issuer: str, audience: str) -> "TokenVerifier":
        if not public_keys:
            raise ValueError("a verifier needs at least one public key")
        return cls(keys={key_id(key): key for key in public_keys}, issuer=issuer, audience=audience)

    def principal(self, token: str) -> Principal:
        """The verified subject of `token` and its roles, or a 401 problem saying (briefly) what is
        wrong."""
        remembered = self._verified.get(token)
        if remembered is not None:
            now = time.time()
            if (
                remembered.not_before - CLOCK_LEEWAY_SECONDS
                <= now
                < remembered.expires + CLOCK_LEEWAY_SECONDS
            ):
                return remembered.principal
            del self._verified[token]  # out of its window: verified again below, to say why
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != TOKEN_TYPE:
                raise unauthorized("The token is not an access token.")
            # The kid only selects one of our own keys; a key the token brings along is never used.
            kid = header.get("kid")
            public_key = self.keys.get(kid) if isinstance(kid, str) else None
            if public_key is None:
                raise unauthorized("The token is signed by an unknown key.")
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS, "verify_nbf": True, "verify_exp": True},
            )
            principal = Principal(uuid.UUID(claims["sub"]), _roles(claims.get(ROLES_CLAIM, [])))
        except jwt.ExpiredSignatureError:
            raise unauthorized("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("The token is not valid yet.") from None
        except (jwt.InvalidTokenError, ValueError):
            raise unauthorized("The token is invalid.") from None
        self._verified[token] = _Verified(principal, float(claims["nbf"]), float(claims["exp"]))
        if len(self._verified) > REMEMBERED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def principal_from_request(self, request: web.Request) -> Principal:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Send an access token as `Authorization: Bearer <token>`.")
        return self.principal(token.strip())


def _roles(claim: object) -> frozenset[str]:
    """The roles claim, which must be a list of strings: a signed token of ours always has one, so
    anything else is a token that is not (a ValueError, answered as an invalid token)."""
    if not isinstance(claim, list) or not all(isinstance(role, str) for role in claim):
        raise ValueError("the roles claim is not a list of strings")
    return frozenset(claim)


TOKEN_VERIFIER = web.AppKey("token_verifier", TokenVerifier)
AUTHENTICATED_USER = web.RequestKey("authenticated_user", uuid.UUID)
AUTHENTICATED_ROLES: web.RequestKey[frozenset[str]] = web.RequestKey("authenticated_roles", frozenset)
