"""What a request can be refused for: plain exceptions, raised by every room, mapped to HTTP statuses once
(in server/api/errors.py). Each carries one clear sentence for the client and, where it helps, headers
such as Retry-After.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request refused or failed on purpose; `message` is shown to the client as it is, `field` names the request
    field at fault, when there is one (OpenAI's error shape carries it as `param`)."""

    def __init__(self, message: str, headers: dict[str, str] | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.field = field


class BadRequest(ServiceError):
    """Invalid parameters, or an image that cannot be read or fetched."""


class Unauthorized(ServiceError):
    """No key, an unknown key or a revoked one."""


class Forbidden(ServiceError):
    """A valid key that may not use this endpoint."""


class NotFound(ServiceError):
    """An unknown, expired or foreign request id, or a result that does not exist."""


class NotAcceptable(ServiceError):
    """Insufficient credits, or a body of another content type (the hosted API's 406)."""


class RequestTimeout(ServiceError):
    """The client took too long to send its request's body."""


class Conflict(ServiceError):
    """The request clashes with the state of a job (cancel a running job, reuse an idempotency key)."""


class TooLarge(ServiceError):
    """A body, an image or a fetched file past its cap."""


class TooManyRequests(ServiceError):
    """A rate limit reached or the queue full; the headers say when to retry."""


class Unavailable(ServiceError):
    """Loading, draining, or the engine cannot run."""


class TimedOut(ServiceError):
    """The request did not finish within its deadline."""


class ClientGone(ServiceError):
    """The client closed the connection before its answer was ready (its job dropped if it had not started):
    nothing reaches it; the log and the metrics say 499, as nginx does, not a timeout of ours."""


class InternalError(ServiceError):
    """Something failed on our side; the log has the details."""
