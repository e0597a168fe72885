"""Domain errors, each carrying the hosted API's error code and HTTP status.

Any layer may raise these; ``api/errors.py`` turns them into the API's error JSON in one place.
Anything else that escapes is logged and answered as an opaque ``InternalError``.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``code`` and ``status`` follow the hosted API's error table.

    ``param`` names the request parameter at fault, where known; OpenAI's error shape carries it.
    """

    code = "InternalError"
    status = 500
    default_message = "An internal error has occurred, please try again later."

    def __init__(self, message: str | None = None, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        self.param = param
        super().__init__(self.message)


class InvalidParameter(ServiceError):
    code = "InvalidParameter"
    status = 400
    default_message = "Required parameter(s) missing or invalid, please check the request parameters."


class InvalidImage(InvalidParameter):
    """The bytes are not an allowed image, or exceed the byte/pixel/side limits."""

    default_message = "Invalid image format or corrupted file."


class InputDownloadFailed(InvalidParameter):
    default_message = "Image download failed."


class InvalidURL(ServiceError):
    """The URL is malformed, uses a refused scheme or port, or points at a refused address."""

    code = "InvalidURL"
    status = 400
    default_message = "Invalid URL provided in your request."


class InvalidApiKey(ServiceError):
    code = "InvalidApiKey"
    status = 401
    default_message = "Invalid API-key provided."


class AccessDenied(ServiceError):
    code = "AccessDenied"
    status = 403
    default_message = "Access denied."


class ResultNotFound(ServiceError):
    """A result URL that is unknown, expired or wrongly signed: no detail on purpose."""

    code = "NotFound"
    status = 404
    default_message = "Not found."


class ModelNotFound(ServiceError):
    code = "ModelNotFound"
    status = 404
    default_message = "Model can not be found."


class PayloadTooLarge(ServiceError):
    code = "BadRequest.TooLarge"
    status = 413
    default_message = "Payload Too Large."


class UnsupportedOperation(ServiceError):
    code = "UnsupportedOperation"
    status = 400
    default_message = "Failed to cancel the task, please confirm if the task is in PENDING status."


class Throttling(ServiceError):
    """The queue is full: come back after ``Retry-After`` seconds."""

    code = "Throttling"
    status = 429
    default_message = "Requests throttling triggered."

    def __init__(self, retry_after_seconds: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_seconds))})


class RateQuotaExceeded(Throttling):
    """A key went over its per-model request rate or its concurrent-task limit."""

    code = "Throttling.RateQuota"
    default_message = "Requests rate limit exceeded, please try again later."


class InferenceFailed(ServiceError):
    """The pipeline raised; the task fails cleanly and the next one runs."""

    code = "InternalError.Algo"
    status = 500
    default_message = "Inference internal error."


class ResultStorageFailed(ServiceError):
    """The image was made but could not be stored (disk full, read-only): the task fails with the cause."""

    code = "InternalError.Upload"
    status = 500
    default_message = "Failed to store the result."


class ModelUnavailable(ServiceError):
    code = "ModelUnavailable"
    status = 503
    default_message = "Model is unavailable, please try again later."


class RequestTimeout(ServiceError):
    """The client sent its request too slowly; the connection is closed."""

    code = "RequestTimeOut"
    status = 408
    default_message = "Request timed out, please try again later."


class TaskTimedOut(ServiceError):
    """A task ran past the per-task runtime cap and was stopped; its batch's other tasks stop with it."""

    code = "RequestTimeOut"
    status = 500
    default_message = "The task ran past its time limit and was stopped."
