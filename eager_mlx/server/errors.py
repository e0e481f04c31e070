"""The one error type of the server: an OpenAI-style JSON error with an HTTP status."""
from __future__ import annotations

from http import HTTPStatus
from typing import Optional

__all__ = ["APIError", "error_type"]

_MAX_MESSAGE = 300  # characters: a message names the input, it does not echo all of it


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status: client errors are invalid requests, the rest server errors."""
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class APIError(Exception):
    """A request error, sent as ``{"error": {"message", "type", "param", "code"}}`` with `status`.

    `headers` are extra response headers (e.g. ``Allow`` for a 405). The message is
    cut to one line of at most 300 characters.
    """

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        line = (str(message).splitlines() or [_phrase(status)])[0]
        line = line if len(line) <= _MAX_MESSAGE else line[:_MAX_MESSAGE - 3] + "..."
        super().__init__(line)
        self.status, self.message, self.param, self.code = status, line, param, code
        self.type = type or error_type(status)
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
