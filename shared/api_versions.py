"""The public API's versions, and what the clients of a deprecated one are told.

The version is in the URL path: `/api/v2/...` is the current API, and the paths without a version,
`/api/...`, are version 1, kept working until its sunset. Why the path (docs/api.md, "Versions"):
it shows in every log line, trace and flow-page arrow; the gateway routes it without reading a
header; a cache keys on it; and OpenAPI describes each version's operations apart, with their own
schemas, so that a client generated from the contract gets both, each with its own types.

An operation that its contract marks `deprecated: true` answers, on every response, success or
problem, with the headers of `DEPRECATED`: RFC 9745's `Deprecation` (since when), RFC 8594's
`Sunset` (when it stops answering), and a `Link` to the migration note. The gateway adds them
(gateway/app.py), because the versions are the public API's: its own refusals (429, 503, ...)
carry them as well as the services' answers.
"""

import dataclasses
import datetime
import email.utils

CURRENT_PREFIX = "/api/v2"
MIGRATION_NOTE = "/docs/migration-v2"


@dataclasses.dataclass(frozen=True)
class Deprecation:
    version: str
    deprecated_at: datetime.datetime
    sunset_at: datetime.datetime
    migration_note: str  # a URL path of the gateway's

    def headers(self) -> dict[str, str]:
        return {
            # A structured-field date (RFC 9651): "@" and seconds since the epoch.
            "Deprecation": f"@{int(self.deprecated_at.timestamp())}",
            "Sunset": email.utils.format_datetime(self.sunset_at, usegmt=True),
            "Link": (
                f'<{self.migration_note}>; rel="deprecation"; type="text/markdown", '
                f'<{self.migration_note}>; rel="sunset"; type="text/markdown"'
            ),
        }


DEPRECATED = Deprecation(
    version="1",
    deprecated_at=datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC),
    sunset_at=datetime.datetime(2027, 6, 30, tzinfo=datetime.UTC),
    migration_note=MIGRATION_NOTE,
)
