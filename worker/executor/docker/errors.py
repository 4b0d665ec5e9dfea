"""Engine errors as the executor's: the one place docker-py's and requests' exceptions are
translated (transient when the engine could not be reached or answered 5xx), and what an
ExecutorError tells of the engine's answer."""

from __future__ import annotations

import docker.errors
import requests

from worker.executor.base import ExecutorError, PermanentError, TransientError


def translate(err: Exception, engine: str) -> ExecutorError | None:
    """The ExecutorError for an exception of a docker-py call (raise it `from err`); None
    if the exception is not the engine's."""
    if isinstance(err, docker.errors.APIError):
        kind = TransientError if err.is_server_error() else PermanentError
        return kind(message(err))
    if isinstance(err, (docker.errors.DockerException, requests.RequestException, OSError)):
        return TransientError(f"container engine {engine} unreachable: {err}")
    return None


def message(err: docker.errors.APIError) -> str:
    explanation = err.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or err).strip()


def engine_unreachable(err: ExecutorError) -> bool:
    """The call never got an answer from the engine (as opposed to an error it returned)."""
    return err.transient and not isinstance(err.__cause__, docker.errors.APIError)


def status_code(err: ExecutorError) -> int | None:
    """The HTTP status the engine answered with, if it answered."""
    cause = err.__cause__
    return cause.status_code if isinstance(cause, docker.errors.APIError) else None
