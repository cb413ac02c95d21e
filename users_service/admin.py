"""The operator's command for roles: the only way anyone becomes an admin.

    python -m users_service.admin grant EMAIL     # EMAIL's next access token carries the admin role
    python -m users_service.admin revoke EMAIL    # ... and no longer does
    python -m users_service.admin list            # who holds it

It writes to users_service's database directly (DATABASE_URL, the service's own setting), so only
someone who can reach that database can run it: the API has no operation that grants a role, so no
client, however it is signed in, can make itself or anyone an admin (OWASP API5). A role is carried
in the access token, so a grant or revocation takes effect with the user's next sign-in, within one
token lifetime (JWT_TTL_SECONDS) at most. It applies users_service's migrations first, as the
service does when it starts, so it works on a database the service has not yet run against.
"""

import argparse
import asyncio
import sys

from shared.auth import ADMIN
from shared.config import ConfigError
from shared.db import create_pool
from shared.migrate import migrate
from users_service import db
from users_service.config import UsersConfig
from users_service.services import normalize_email


async def run(arguments: argparse.Namespace, config: UsersConfig) -> int:
    dsn = config.database_url.value
    await migrate(dsn, "users_service", startup_timeout=config.startup_timeout)
    pool = await create_pool(dsn, max_size=1, startup_timeout=config.startup_timeout)
    try:
        if arguments.command == "list":
            for user in await db.fetch_users_with_role(pool, ADMIN):
                print(f"{user['email']}\t{user['id']}\t{user['name']}")
            return 0
        email = normalize_email(arguments.email)
        granted = arguments.command == "grant"
        if not await db.set_role(pool, email, ADMIN, granted=granted):
            print(f"no user has the email {email}", file=sys.stderr)
            return 1
        print(f"{'granted' if granted else 'revoked'} {ADMIN}: {email} (effective from their next sign-in)")
        return 0
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m users_service.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, what in (("grant", "give EMAIL the admin role"), ("revoke", "take it away")):
        commands.add_parser(command, help=what).add_argument("email", metavar="EMAIL")
    commands.add_parser("list", help="the users who hold the admin role")
    arguments = parser.parse_args(argv)
    try:
        config = UsersConfig.from_env()
    except ConfigError as error:
        parser.error(str(error))
    return asyncio.run(run(arguments, config))


if __name__ == "__main__":
    sys.exit(main())
