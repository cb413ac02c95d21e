"""Create the Ed25519 key pair that signs access tokens, unless it exists already.

    python -m users_service.keygen [--private PATH] [--public PATH]

Run by `make dev` and by the compose file's one-shot `keygen` service. No key is ever committed,
and this program never prints one: it names the files and the key id (`kid`) only.

When `JWT_PUBLIC_KEY_FILE` lists several files (a key rotation), `--public` defaults to the first.
To rotate: write a new pair to new paths, add the new public file to every verifier's list, point
`JWT_PRIVATE_KEY_FILE` at the new private key, and drop the old public file one token lifetime later.
"""

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from shared.auth import key_files, key_id, load_public_key
from users_service.config import UsersConfig


def ensure_keypair(private_path: Path, public_path: Path) -> bool:
    """Write a new pair when the private key is absent; return whether one was written."""
    if private_path.exists():
        if not public_path.exists():  # e.g. a run killed between the two writes: derive it again
            _write_public_key(load_pem_private_key(private_path.read_bytes(), password=None), public_path)
        return False
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    # Created with owner-only permissions from the first byte, not chmod-ed afterwards.
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as private_file:
        private_file.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    _write_public_key(key, public_path)
    return True


def _write_public_key(key: PrivateKeyTypes, public_path: Path) -> None:
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit("the private key is not an Ed25519 key")
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def main() -> None:
    defaults = UsersConfig.from_env()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--private", type=Path, default=Path(defaults.jwt_private_key_file))
    parser.add_argument("--public", type=Path, default=key_files(defaults.jwt_public_key_file)[0])
    arguments = parser.parse_args()
    written = ensure_keypair(arguments.private, arguments.public)
    kid = key_id(load_public_key(arguments.public))
    if written:
        print(f"keygen: wrote a new key pair (kid {kid}): {arguments.private} and {arguments.public}")
    else:
        print(f"keygen: key pair already present (kid {kid}): {arguments.private}")


if __name__ == "__main__":
    main()
