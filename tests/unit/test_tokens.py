"""RFC 8725 rules for the access token: one algorithm, one key, every claim checked."""

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest

from shared.auth import TokenVerifier
from shared.problems import Problem
from tests.support import KeyPair, make_key_pair
from users_service.tokens import TokenIssuer

ISSUER, AUDIENCE = "eda-reference/users", "eda-reference"


@pytest.fixture
def issuer(key_pair: KeyPair) -> TokenIssuer:
    return TokenIssuer.from_pem_file(key_pair.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)


@pytest.fixture
def verifier(key_pair: KeyPair) -> TokenVerifier:
    return TokenVerifier.from_pem_file(key_pair.public, issuer=ISSUER, audience=AUDIENCE)


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Problem) as refusal:
        verifier.user_id(token)
    assert refusal.value.status == 401
    return refusal.value.detail or ""


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 60,
    }
    return {**base, **overrides}


def test_an_issued_token_verifies_to_its_subject(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    user_id = uuid.uuid4()
    token = issuer.issue(user_id)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "at+jwt"}
    assert verifier.user_id(token) == user_id


def test_an_expired_token_is_refused(key_pair: KeyPair, verifier: TokenVerifier) -> None:
    old = TokenIssuer.from_pem_file(key_pair.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=-120)
    assert refused(verifier, old.issue(uuid.uuid4())) == "The token has expired."


def test_a_token_signed_by_another_key_is_refused(tmp_path: Path, verifier: TokenVerifier) -> None:
    stranger = make_key_pair(tmp_path)
    forged = TokenIssuer.from_pem_file(stranger.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
    refused(verifier, forged.issue(uuid.uuid4()))


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode(claims(), key="", algorithm="none", headers={"typ": "at+jwt"})
    refused(verifier, unsigned)


def test_hmac_with_the_public_key_as_secret_is_refused(key_pair: KeyPair, verifier: TokenVerifier) -> None:
    # The classic algorithm-confusion attack: sign with HS256 using the (public) verification key.
    header = {"alg": "HS256", "typ": "at+jwt"}
    segments = [jwt.utils.base64url_encode(json.dumps(part).encode()) for part in (header, claims())]
    signing_input = b".".join(segments)
    signature = hmac.new(key_pair.public.read_bytes(), signing_input, hashlib.sha256).digest()
    refused(verifier, (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode())


@pytest.mark.parametrize(
    "overrides",
    [{"aud": "someone-else"}, {"iss": "https://evil.example"}, {"sub": "not-a-uuid"}],
    ids=["wrong-audience", "wrong-issuer", "subject-not-a-user-id"],
)
def test_wrong_claims_are_refused(
    issuer: TokenIssuer, verifier: TokenVerifier, overrides: dict[str, object]
) -> None:
    token = jwt.encode(claims(**overrides), issuer.private_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    refused(verifier, token)


def test_a_token_without_the_access_token_type_is_refused(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = jwt.encode(claims(), issuer.private_key, algorithm="EdDSA", headers={"typ": "JWT"})
    assert refused(verifier, token) == "The token is not an access token."


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "aud", "iss"])
def test_a_token_missing_a_required_claim_is_refused(
    issuer: TokenIssuer, verifier: TokenVerifier, missing: str
) -> None:
    incomplete = claims()
    del incomplete[missing]
    token = jwt.encode(incomplete, issuer.private_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    refused(verifier, token)


def test_garbage_is_refused(verifier: TokenVerifier) -> None:
    refused(verifier, "not.a.jwt")
    refused(verifier, "")
