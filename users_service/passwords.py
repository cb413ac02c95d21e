"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds of CPU)."""

import asyncio

import argon2


class PasswordHasher:
    def __init__(self) -> None:
        self._argon = argon2.PasswordHasher()
        # Checking a password against this hash when the email is unknown makes "no such user"
        # take as long as "wrong password", so response times do not reveal who has an account.
        self._unknown_user_hash = self._argon.hash("no user has this password")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._argon.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return (
                await asyncio.to_thread(
                    self._argon.verify, password_hash or self._unknown_user_hash, password
                )
                and password_hash is not None
            )
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False
