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
    """The broker refused or could not be reached. `code` is the gRPC status code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class LeaseExpiredError(KeyBrokerError):
    """A data key's lease ended and could not be renewed."""
