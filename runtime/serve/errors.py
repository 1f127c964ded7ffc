"""Errors of the server and its client: what a request or stream message was refused for, with the
HTTP status or WebSocket close code to answer with."""
from meltok_runtime.errors import MeltokError


class ProtocolError(MeltokError, ValueError):
    """A stream message the server cannot use; ``close_code`` is the WebSocket close code to send."""

    def __init__(self, message: str, close_code: int = 1003):
        super().__init__(message)
        self.close_code = close_code


class RequestError(MeltokError, ValueError):
    """An HTTP request the server cannot use (bad parameters, body); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Refused(MeltokError, RuntimeError):
    """An HTTP request answered with ``status`` before any work (auth, readiness, limits)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class Disconnected(MeltokError, ConnectionError):
    """The client went away."""


class ServeError(MeltokError, RuntimeError):
    """The server refused a request; ``status``: HTTP status or WebSocket close code."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
