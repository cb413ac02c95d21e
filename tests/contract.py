"""Holding the services to their OpenAPI contracts in tests: every response they send is checked."""

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from shared.app_keys import CONTRACT


def undocumented_routes(app: web.Application) -> set[tuple[str, str]]:
    """Routes the app serves that its contract does not describe."""
    return _routes(app) - set(app[CONTRACT].operations)


def unserved_operations(app: web.Application) -> set[tuple[str, str]]:
    """Operations the contract describes that the app does not serve."""
    return set(app[CONTRACT].operations) - _routes(app)


def _routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }


def response_checker(violations: list[str]) -> Middleware:
    """A middleware (put outermost) that records every way a response breaks the contract."""

    @web.middleware
    async def check_response(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        if resource is not None and isinstance(response, web.Response):
            body = response.body if isinstance(response.body, bytes | bytearray) else b""
            violations.extend(
                request.app[CONTRACT].response_errors(
                    request.method,
                    resource.canonical,
                    response.status,
                    response.content_type,
                    bytes(body),
                )
            )
        return response

    return check_response
