"""What the compose tests add to the e2e tests' client of the public API (tests/e2e/api.py): an admin,
made as an operator makes one in compose, and the API's address through the gateway's published port.

New users get the policy's credit limit (NEW_USER_CREDIT_LIMIT_CENTS, which compose leaves at its
default) and orders are priced from the catalogue: a test that needs a given limit has an admin set
it, and one that needs a given total has an admin put a product of its own at that price.
"""

import aiohttp

from shared.api_versions import CURRENT_PREFIX
from tests.compose.conftest import docker_compose
from tests.e2e.api import PASSWORD, User, new_user


def api(url: str) -> str:
    return f"{url}{CURRENT_PREFIX}"


async def sign_in(http: aiohttp.ClientSession, url: str, email: str) -> dict[str, str]:
    """The Authorization header of a fresh access token."""
    async with http.post(f"{api(url)}/auth/token", json={"email": email, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def new_admin(http: aiohttp.ClientSession, url: str) -> User:
    """A user made an admin by the operator's command, run where compose lets an operator reach
    users_service's database: in a container of the `tools`. The role is in the tokens the user gets
    from then on, so the admin signs in again."""
    user = await new_user(http, url)
    await docker_compose(
        "run", "--rm", "--no-deps", "-T", "tools", "python", "-m", "users_service.admin", "grant", user.email
    )
    return await signed_in(http, url, user.email)


async def signed_in(http: aiohttp.ClientSession, url: str, email: str) -> User:
    """The user of `email`, signed in now: with the roles they hold now."""
    headers = await sign_in(http, url, email)
    async with http.get(f"{api(url)}/users/me", headers=headers) as response:
        assert response.status == 200, await response.text()
        return User((await response.json())["id"], email, headers)
