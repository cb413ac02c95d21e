"""The live flow page (development only): every HTTP call through the gateway and every event on the
broker, as records streamed to the page at /flow (Server-Sent Events) while they happen.

    the firehose (amq.rabbitmq.trace) ──▶ EventTap ──────────────┐
    the gateway's middleware (client ⇄ gateway) ─────────────────┼──▶ FlowHub ──SSE──▶ each open page
    the proxy's hook (gateway ⇄ service, gateway/proxy.py) ──────┘   (+ recent records for a new page)

One module each: records.py (a record: one arrow of the sequence diagram), hub.py (FlowHub: each
page's bounded queue), recorder.py (the HTTP arrows: the middleware and the proxy's hook), tap.py
(the event arrows: EventTap), routes.py (the page, its files in static/, the stream, and FlowPage,
what gateway/app.py wires in).

No production module imports this package: gateway/app.py loads it only when FLOW_ENABLED is on,
which gateway/config.py refuses outside development, because events are shown whole, data
included.
"""

from gateway.flow.routes import FlowPage

__all__ = ["FlowPage"]
