"""keybroker: client of the keybroker key broker, and the KBEF encrypted file format.

    kb = KeyBroker.from_env()
    with kb.open_encrypted("shard.kbef", "wb", key="datasets/demo", context={"dataset": "demo"}) as f:
        numpy.save(f, array)
    with kb.open_encrypted("shard.kbef", "rb") as f:
        array = numpy.load(f)
"""

from .client import DataKey, KeyBroker
from .errors import (
    BrokerError,
    ContextMismatchError,
    FormatError,
    IntegrityError,
    KeyBrokerError,
    LeaseExpiredError,
)
from .release import ReleaseError
from .signing import Attestation, Signature
from .stream import EncryptedReader, EncryptedWriter, StaticKey

__all__ = [
    "Attestation",
    "BrokerError",
    "ContextMismatchError",
    "DataKey",
    "EncryptedReader",
    "EncryptedWriter",
    "FormatError",
    "IntegrityError",
    "KeyBroker",
    "KeyBrokerError",
    "LeaseExpiredError",
    "ReleaseError",
    "Signature",
    "StaticKey",
]
