"""The ways one request can fail, each with its HTTP status and the `reason` label of the failures metric.
Every one answers `{"error": message}` (the protocol's error object, what tritonclient reads); the server
stays up."""

from __future__ import annotations


class RequestError(Exception):
    status = 500
    reason = "internal"

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(RequestError):
    """Malformed JSON, a tensor of the wrong name, datatype or shape, bytes that are not an image."""

    status = 400
    reason = "bad_request"


class Unauthorized(RequestError):
    status = 401
    reason = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="pyimgano-serve"'}


class NotFound(RequestError):
    """An unknown model, or a version that is not in the repository or not selected by its policy."""

    status = 404
    reason = "not_found"


class TooLarge(RequestError):
    status = 413
    reason = "too_large"


class Unavailable(RequestError):
    """Not ready (a refused or loading version) or overloaded (the version's queue is full); try later."""

    status = 503
    reason = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1, reason: str = "unavailable"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class QueueFull(Unavailable):
    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, retry_after_s, reason="queue_full")


class Timeout(RequestError):
    status = 504
    reason = "timeout"


class ModelFailure(RequestError):
    """The model produced something no decision can be made on (a non-finite score or map)."""

    status = 500
    reason = "model_failure"
