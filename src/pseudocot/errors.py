"""The one user-error type, `PseudocotError`, and its kinds.

Every problem a user can cause and fix (a bad config key or value, a malformed data row, a missing
or unsafe model folder, an endpoint that will not answer, a stage that failed in its own process)
is raised as a subclass of `PseudocotError` with a one-sentence message that says what was wrong,
where (file:line, key, folder) and what to do. The command line catches `PseudocotError` once and
prints `error: <message>` with exit code 1, never a traceback. Anything else is a bug.

The kinds subclass `ValueError` as well (except `EndpointError` and `StageError`), so library callers
that catch `ValueError` keep working.
"""

from __future__ import annotations


class PseudocotError(Exception):
    """A problem the user can fix; the message is one sentence saying what, where and what to do."""


class ConfigError(PseudocotError, ValueError):
    """A config key, value or override is wrong; the message names the file:line or override."""


class DataError(PseudocotError, ValueError):
    """A data file or row is wrong or missing; the message starts with `FILE:LINE:` where there is one."""


class ModelError(PseudocotError, ValueError):
    """A model folder, tokenizer, device or dtype problem (wrong path, unsafe weights, missing GPU)."""


class EndpointError(PseudocotError, RuntimeError):
    """An OpenAI-compatible endpoint failed after every retry, or answered something unusable."""


class StageError(PseudocotError, RuntimeError):
    """A stage run in its own process (`run.parallel_stages`) failed; the message points at its log."""


class RequestError(PseudocotError, ValueError):
    """An HTTP request to `pseudocot serve` is wrong: answered with `status` and the OpenAI error object
    (`message`, `type`, `param`: the field at fault, `code`)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type, self.headers = status, param, code, type, headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
