"""RFC 8725 (JSON Web Token Best Current Practices): each attack it names, tried and refused.

Each test is named after the section of RFC 8725 whose rule it proves (or of RFC 7519 for the time
claims, which RFC 8725 takes for granted). Every refusal is a 401 problem, never an exception.
"""

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest

from devstack.keys import KeyPair, make_key_pair
from shared.auth import TokenVerifier
from shared.problems import Problem
from tests.conftest import AUDIENCE, ISSUER
from users_service.tokens import TokenIssuer


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Problem) as refusal:
        verifier.principal(token)
    assert refusal.value.status == 401
    return refusal.value.detail or ""


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    return {**base, **overrides}


def signed(issuer: TokenIssuer, token_claims: dict[str, object], **header: object) -> str:
    """A token signed with the real private key: only the part a test changes is wrong."""
    headers = {"typ": "at+jwt", "kid": issuer.key_id, **header}
    headers = {name: value for name, value in headers.items() if value is not None}  # None: leave out
    return jwt.encode(token_claims, issuer.private_key, algorithm="EdDSA", headers=headers)


def test_rfc8725_3_1_alg_none_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    unsigned = jwt.encode(claims(), key="", algorithm="none", headers={"typ": "at+jwt", "kid": issuer.key_id})
    refused(verifier, unsigned)


def test_rfc8725_3_1_hmac_with_public_key_is_refused(
    key_pair: KeyPair, issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    # The classic algorithm-confusion attack: sign with HS256 using the (public) verification key.
    header = {"alg": "HS256", "typ": "at+jwt", "kid": issuer.key_id}
    segments = [jwt.utils.base64url_encode(json.dumps(part).encode()) for part in (header, claims())]
    signing_input = b".".join(segments)
    signature = hmac.new(key_pair.public.read_bytes(), signing_input, hashlib.sha256).digest()
    refused(verifier, (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode())


def test_rfc8725_3_2_another_key_is_refused(
    tmp_path: Path, issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    # A forger's own Ed25519 key, even under the kid of the real one: the signature does not verify.
    stranger = make_key_pair(tmp_path)
    forger = TokenIssuer.from_pem_file(stranger.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
    refused(verifier, signed(forger, claims(), kid=issuer.key_id))


def test_rfc8725_3_8_wrong_issuer_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, signed(issuer, claims(iss="https://evil.example")))


def test_rfc8725_3_8_subject_must_be_a_user_id(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, signed(issuer, claims(sub="not-a-uuid")))


@pytest.mark.parametrize("missing", ["exp", "nbf", "iat", "sub", "aud", "iss"])
def test_rfc8725_3_8_every_claim_checked_is_required(
    issuer: TokenIssuer, verifier: TokenVerifier, missing: str
) -> None:
    incomplete = claims()
    del incomplete[missing]
    refused(verifier, signed(issuer, incomplete))


def test_rfc8725_3_9_wrong_audience_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    refused(verifier, signed(issuer, claims(aud="someone-else")))


def test_rfc8725_3_10_unknown_kid_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    assert refused(verifier, signed(issuer, claims(), kid="no-such-key")) == (
        "The token is signed by an unknown key."
    )
    refused(verifier, signed(issuer, claims(), kid=None))  # no kid at all


def test_rfc8725_3_10_a_key_embedded_in_the_token_is_ignored(tmp_path: Path, verifier: TokenVerifier) -> None:
    # The forger ships its own public key (jwk) and names it: only keys of our own set are trusted.
    forger = TokenIssuer.from_pem_file(
        make_key_pair(tmp_path).private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60
    )
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(forger.private_key.public_key()))
    assert refused(verifier, signed(forger, claims(), jwk=jwk)) == "The token is signed by an unknown key."


def test_rfc8725_3_11_typ_must_be_access_token(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    assert refused(verifier, signed(issuer, claims(), typ="JWT")) == "The token is not an access token."


def test_rfc7519_4_1_4_expired_token_is_refused(key_pair: KeyPair, verifier: TokenVerifier) -> None:
    old = TokenIssuer.from_pem_file(key_pair.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=-120)
    assert refused(verifier, old.issue(uuid.uuid4())) == "The token has expired."


def test_rfc7519_4_1_5_not_yet_valid_token_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    later = int(time.time()) + 600  # beyond the clock leeway; iat is now, so only nbf can refuse it
    token = signed(issuer, claims(nbf=later, exp=later + 60))
    assert refused(verifier, token) == "The token is not valid yet."


def test_rfc8725_3_10_rotation_both_keys_verify_then_the_old_one_is_dropped(
    tmp_path: Path, key_pair: KeyPair, issuer: TokenIssuer
) -> None:
    new_pair = make_key_pair(tmp_path)
    new_issuer = TokenIssuer.from_pem_file(new_pair.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
    assert new_issuer.key_id != issuer.key_id
    old_token, new_token = issuer.issue(uuid.uuid4()), new_issuer.issue(uuid.uuid4())

    during = TokenVerifier.from_pem_file(
        f"{key_pair.public},{new_pair.public}", issuer=ISSUER, audience=AUDIENCE
    )
    assert during.principal(old_token)
    assert during.principal(new_token)

    after = TokenVerifier.from_pem_file(new_pair.public, issuer=ISSUER, audience=AUDIENCE)
    assert after.principal(new_token)
    assert refused(after, old_token) == "The token is signed by an unknown key."
