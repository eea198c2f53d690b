"""Errors of the keybroker client. Messages never contain key material, tokens or plaintext."""

from __future__ import annotations


class KeyBrokerError(Exception):
    """Base of every error this package raises."""


class FormatError(KeyBrokerError):
    """The bytes are not a well-formed KBEF file (bad magic, version, length, limit)."""


class IntegrityError(KeyBrokerError):
    """Authentication failed: the file was tampered with, truncated, reordered, spliced, or the
    key or context is wrong. No plaintext of the failing segment is ever returned."""


class ContextMismatchError(KeyBrokerError):
    """The file's encryption context or key name is not the one the caller expected."""


class BrokerError(KeyBrokerError):
    """The broker refused or could not be reached. `code` is the gRPC status code name,
    `request_id` the call's `x-request-id` (the key to its audit record), when known."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (request id: {request_id})" if request_id else ""))
        self.code = code
        self.message = message
        self.request_id = request_id


class LeaseExpiredError(KeyBrokerError):
    """A data key's lease ended and could not be renewed."""
