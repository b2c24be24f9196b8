"""Key material for deployments and signatures for files the server must be able to trust."""

from fl_ext.security.signing import (
    SignatureError,
    load_or_create_signing_key,
    load_verify_key,
    sign_bytes,
    verify_bytes,
)
from fl_ext.security.tls import DeploymentMaterial, generate_material

__all__ = [
    "DeploymentMaterial",
    "SignatureError",
    "generate_material",
    "load_or_create_signing_key",
    "load_verify_key",
    "sign_bytes",
    "verify_bytes",
]
