"""Access tokens as they should work: issuing, verifying, key sets, keys kept secret.

The attacks RFC 8725 names, each refused, are in tests/security/test_tokens_rfc8725.py.
"""

import base64
import datetime
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from devstack.keys import KeyPair, make_key_pair
from shared.auth import ADMIN, Principal, TokenVerifier, key_files, key_id, load_public_key
from shared.problems import Problem
from tests.conftest import AUDIENCE, ISSUER
from users_service import keygen
from users_service.tokens import TokenIssuer


def signed(issuer: TokenIssuer, **overrides: object) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "iat": now, "nbf": now}
    claims |= {"exp": now + 60, **overrides}
    headers = {"typ": "at+jwt", "kid": issuer.key_id}
    return jwt.encode(claims, issuer.private_key, algorithm="EdDSA", headers=headers)


def test_an_issued_token_verifies_to_its_subject(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    user_id = uuid.uuid4()
    token = issuer.issue(user_id)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "at+jwt", "kid": issuer.key_id}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "roles"}
    assert claims["roles"] == []  # RFC 9068's claim, there even when it grants nothing
    assert verifier.principal(token) == Principal(user_id, frozenset())


def test_an_issued_token_carries_its_roles(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    user_id = uuid.uuid4()
    token = issuer.issue(user_id, ["support", ADMIN])
    assert jwt.decode(token, options={"verify_signature": False})["roles"] == [ADMIN, "support"]  # sorted
    assert verifier.principal(token) == Principal(user_id, frozenset({ADMIN, "support"}))


def test_a_token_without_a_roles_claim_grants_none(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    assert verifier.principal(signed(issuer)).roles == frozenset()


@pytest.mark.parametrize(
    "roles",
    ["admin", ["admin", 1], [["admin"]], {"admin": True}, None, 1],
    ids=["a string", "a list with a number", "a nested list", "an object", "null", "a number"],
)
def test_a_roles_claim_that_is_not_a_list_of_strings_makes_the_token_invalid(
    issuer: TokenIssuer, verifier: TokenVerifier, roles: object
) -> None:
    with pytest.raises(Problem, match="invalid") as refusal:
        verifier.principal(signed(issuer, roles=roles))
    assert refusal.value.status == 401


def test_the_key_id_is_the_rfc_7638_thumbprint_of_the_public_key() -> None:
    # RFC 8037 appendix A.2 and A.3: an example Ed25519 public key (x) and its JWK thumbprint.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    public_key = Ed25519PublicKey.from_public_bytes(x)
    assert key_id(public_key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_the_issuer_and_the_verifier_agree_on_the_key_id(key_pair: KeyPair, issuer: TokenIssuer) -> None:
    assert issuer.key_id == key_id(load_public_key(key_pair.public))


def test_clock_skew_within_the_leeway_is_tolerated(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert verifier.principal(signed(issuer, exp=now - 10))  # expired 10 s ago by the issuer's clock
    assert verifier.principal(signed(issuer, nbf=now + 10, iat=now + 10))  # an issuer clock 10 s ahead


def test_a_remembered_token_still_expires(
    issuer: TokenIssuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    token = signed(issuer, exp=int(now) + 60)
    assert verifier.principal(token)  # verified once, and remembered
    later = now + 60 + 31  # past exp and the leeway, on both clocks: ours and PyJWT's

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> "Later":
            return cls.fromtimestamp(later, tz)

    monkeypatch.setattr("shared.auth.time.time", lambda: later)
    monkeypatch.setattr("jwt.api_jwt.datetime", Later)
    with pytest.raises(Problem, match="expired"):
        verifier.principal(token)


def test_only_the_exact_token_that_passed_is_remembered(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = signed(issuer)
    assert verifier.principal(token)
    header, claims, signature = token.split(".")
    forged_claims = base64.urlsafe_b64encode(
        jwt.utils.base64url_decode(claims).replace(b'"sub":"', b'"sub":"0')
    ).rstrip(b"=")
    with pytest.raises(Problem, match="invalid"):
        verifier.principal(f"{header}.{forged_claims.decode()}.{signature}")


def test_what_is_remembered_is_bounded(
    issuer: TokenIssuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.auth.REMEMBERED_TOKENS", 2)
    tokens = [signed(issuer) for _ in range(3)]
    for token in tokens:
        assert verifier.principal(token)
    assert list(verifier._verified) == tokens[1:]


def test_a_key_set_is_read_from_comma_separated_files(tmp_path: Path, key_pair: KeyPair) -> None:
    other = make_key_pair(tmp_path)
    verifier = TokenVerifier.from_pem_file(
        f"{key_pair.public}, {other.public}", issuer=ISSUER, audience=AUDIENCE
    )
    assert set(verifier.keys) == {
        key_id(load_public_key(key_pair.public)),
        key_id(load_public_key(other.public)),
    }
    assert key_files(f" {key_pair.public} ,{other.public},") == [key_pair.public, other.public]


def test_a_file_that_is_not_an_ed25519_public_key_is_refused(tmp_path: Path, key_pair: KeyPair) -> None:
    with pytest.raises(ValueError, match="does not hold an Ed25519 public key"):
        TokenVerifier.from_pem_file(key_pair.private, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="no public key file given"):
        TokenVerifier.from_pem_file(" , ", issuer=ISSUER, audience=AUDIENCE)


def test_garbage_is_refused(verifier: TokenVerifier) -> None:
    for garbage in ("not.a.jwt", "", "a.b.c.d"):
        with pytest.raises(Problem) as refusal:
            verifier.principal(garbage)
        assert refusal.value.status == 401


def test_the_issuer_never_shows_its_private_key(issuer: TokenIssuer) -> None:
    raw = issuer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pem = issuer.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    for shown in (repr(issuer), str(issuer)):
        assert "private_key" not in shown
        assert raw.hex() not in shown
        assert pem.splitlines()[1] not in shown


def test_keygen_writes_an_owner_only_key_and_never_prints_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "new" / "private.pem", tmp_path / "new" / "public.pem"
    for _ in range(2):  # the second run finds the pair and keeps it
        monkeypatch.setattr(sys, "argv", ["keygen", "--private", str(private), "--public", str(public)])
        keygen.main()
    printed = capsys.readouterr()
    secret_lines = private.read_text().splitlines()[1:-1]
    assert secret_lines
    assert not any(line in printed.out + printed.err for line in secret_lines)
    assert key_id(load_public_key(public)) in printed.out
    assert private.stat().st_mode & 0o777 == 0o600
