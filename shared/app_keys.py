"""What a service's app holds, by typed key. Routes and handlers import these, not the skeleton that
fills them (shared/service.py), nor the resources that open them (shared/resources.py)."""

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from shared.metrics import MessagingMetrics
from shared.openapi import OpenApiSpec
from shared.unit_of_work import Outbox

CONTRACT = web.AppKey("contract", OpenApiSpec)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
BROKER = web.AppKey("broker", AbstractRobustConnection)
OUTBOX = web.AppKey("outbox", Outbox)
MESSAGING_METRICS = web.AppKey("messaging_metrics", MessagingMetrics)
