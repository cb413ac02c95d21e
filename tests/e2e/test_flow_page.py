"""The flow page in a real browser (Debian's Chromium, driven by Playwright), against the running
processes: an order placed through the API is drawn as it happens.

The page is opened on a gateway of its own in front of the shared stack's services, its tap on the
stack's virtual host: a second gateway, which also shows that each gateway sees every event.
CHROMIUM_PATH names another Chromium binary.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from devstack.ports import free_port
from tests.e2e.api import final_order, new_user, place_order
from tests.e2e.conftest import ServiceProcess, Stack, start_gateway
from tests.support import require_tool

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
WAIT_MS = 20_000


@pytest.fixture(scope="session")
def chromium() -> str:
    require_tool(
        CHROMIUM if Path(CHROMIUM).exists() else None,
        f"no Chromium at {CHROMIUM}: install Debian's `chromium`, or set CHROMIUM_PATH",
    )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def flow_gateway(stack: Stack, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    # The stack's gateway's settings, on another port, its tap on the stack's own virtual host.
    env = {**stack.env["gateway"], "HTTP_PORT": str(free_port()), "FLOW_ENABLED": "true"}
    gateway = await start_gateway("gateway-flow", env, tmp_path)
    yield gateway
    assert await gateway.stop() == 0


class Troubles:
    """What the page complains about: console errors, uncaught exceptions, CSP violations."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            self.seen.append(f"{message.type}: {message.text}")


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    # Registered for every page of the context, before any script of theirs runs (CSP does not
    # apply to it).
    await context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    yield await context.new_page()
    await context.close()


def arrow(*, order_id: str, **attributes: str) -> str:
    """The selector of an order's arrows with these data attributes (`from_` for data-from)."""
    selector = "".join(
        f'[data-{name.rstrip("_").replace("_", "-")}="{value}"]' for name, value in attributes.items()
    )
    return f'.arrow{selector}[data-order-id="{order_id}"]'


async def test_an_order_placed_through_the_api_appears_on_the_flow_page(
    stack: Stack, flow_gateway: ServiceProcess, page: Page, http: aiohttp.ClientSession
) -> None:
    troubles = Troubles(page)
    url = flow_gateway.url
    await page.goto(f"{url}/flow")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(page.locator("#tap")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)

    admin = stack.keys.admin_headers()  # the flow gateway checks tokens with the stack's key
    user = await new_user(http, url)
    other = await place_order(http, url, user, 1_000, admin=admin)
    order = await place_order(http, url, user, 2_500, admin=admin)
    created = page.locator(arrow(order_id=order["id"], kind="event.published", type="orders.order.created"))
    approved = page.locator(arrow(order_id=order["id"], type="orders.order.approved"))
    await expect(created).to_be_visible(timeout=WAIT_MS)
    await expect(approved).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator(arrow(order_id=other["id"], type="orders.order.approved"))).to_be_visible(
        timeout=WAIT_MS
    )
    # The POST that placed it learns the order's id from its story (the correlation id).
    posted = page.locator(arrow(order_id=order["id"], kind="http.request", from_="client"))
    await expect(posted.first).to_contain_text("POST /api/v2/orders")
    assert (await final_order(http, url, user, order["id"]))["status"] == "APPROVED"

    # A click on an arrow shows the event's envelope.
    await created.click()
    panel = page.locator("#panel")
    await expect(panel).to_be_visible()
    await expect(page.locator("#panel-kind")).to_have_text("event published")
    envelope = page.locator("#panel-envelope")
    await expect(envelope).to_contain_text('"type": "orders.order.created"')
    await expect(envelope).to_contain_text(f'"order_id": "{order["id"]}"')
    await expect(envelope).to_contain_text('"source": "orders_service"')
    await page.keyboard.press("Escape")
    await expect(panel).to_be_hidden()

    # The filter keeps one order's story: the other order's arrows go.
    await page.locator("#filter").fill(order["id"])
    await expect(page.locator(f'.row:not([hidden]) .arrow[data-order-id="{other["id"]}"]')).to_have_count(0)
    await expect(page.locator(arrow(order_id=other["id"], type="orders.order.created")).first).to_be_hidden()
    await expect(approved).to_be_visible()
    await expect(posted.first).to_be_visible()
    assert f"filter={order['id']}" in page.url

    # The filter in the URL is the filter of a newly opened page, which starts with recent records.
    second = await page.context.new_page()
    second_troubles = Troubles(second)
    await second.goto(f"{url}/flow?filter={other['id']}")
    await expect(second.locator("#filter")).to_have_value(other["id"])
    await expect(second.locator(arrow(order_id=other["id"], type="orders.order.approved"))).to_be_visible(
        timeout=WAIT_MS
    )
    await expect(second.locator(arrow(order_id=order["id"], type="orders.order.approved"))).to_be_hidden()

    assert troubles.seen == []
    assert second_troubles.seen == []
    assert await page.evaluate("window.__violations") == []
    assert await second.evaluate("window.__violations") == []

    # Stopping the gateway ends the open pages' streams at once: its shutdown does not wait for them.
    started = time.monotonic()
    assert await flow_gateway.stop() == 0
    assert time.monotonic() - started < 5
    await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)


async def test_the_gateway_serves_the_api_while_the_broker_is_unreachable(
    stack: Stack, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Nothing listens there: the tap keeps trying in the background, and nothing else waits for it.
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    env = {**stack.env["gateway"], "HTTP_PORT": str(free_port()), "RABBITMQ_URL": nowhere}
    gateway = await start_gateway("gateway-without-broker", env, tmp_path)  # /readyz does not ask RabbitMQ
    try:
        await new_user(http, gateway.url)
        async with http.get(f"{gateway.url}/flow/events") as stream, asyncio.timeout(10):
            lines = [await stream.content.readline() for _ in range(4)]
        assert lines[2:] == [b"event: status\n", b'data: {"tap":"connecting"}\n'], lines
    finally:
        assert await gateway.stop() == 0, "a clean stop, even while still connecting"
