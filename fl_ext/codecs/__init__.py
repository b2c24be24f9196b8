"""Compression codecs for updates and broadcasts (framework-free, numpy payloads)."""

from fl_ext.codecs.base import Codec, Payload, PayloadError, payload_bytes
from fl_ext.codecs.chain import Chain
from fl_ext.codecs.dense import Cast, Identity
from fl_ext.codecs.feedback import ErrorFeedback
from fl_ext.codecs.quant import QSGD, BlockQuant
from fl_ext.codecs.sign import SignScale, Ternary
from fl_ext.codecs.sparse import RandomK, TopK

__all__ = [
    "QSGD",
    "BlockQuant",
    "Cast",
    "Chain",
    "Codec",
    "ErrorFeedback",
    "Identity",
    "Payload",
    "PayloadError",
    "RandomK",
    "SignScale",
    "Ternary",
    "TopK",
    "payload_bytes",
]
