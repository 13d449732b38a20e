"""Why the gateway's use cases refuse a request, without HTTP.

The use cases (`reranker.RerankService`, `intake.EventIntake`) and the routes raise these; the edge
(`errors.py`) maps each kind to its status code in one table, so no use case knows about HTTP and a
status is decided in one place. `code` is the stable machine-readable reason clients branch on.
"""

from __future__ import annotations


class Rejected(Exception):
    def __init__(self, code: str, message: str, details: object | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.code, self.message, self.details, self.retry_after_s = code, message, details, retry_after_s


class Unauthenticated(Rejected):
    """No valid API key."""


class UnknownEntity(Rejected):
    """A user (or resource) this gateway does not know."""


class InvalidInput(Rejected):
    """Well-formed JSON that breaks the service's limits or refers to what the catalogue lacks."""


class AtCapacity(Rejected):
    """The LLM has no slot for this request within its budget (when overload is answered by refusal)."""


class Unavailable(Rejected):
    """A dependency this answer cannot do without is down; the client may retry."""
