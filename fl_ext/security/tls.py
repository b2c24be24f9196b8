"""TLS certificates and SuperNode authentication keys for a Flower deployment.

One call writes everything a SuperLink and its SuperNodes need:

- ``ca.crt`` / ``ca.key``: a private certificate authority (EC P-384, 10 years);
- ``server.crt`` / ``server.key``: the SuperLink's certificate for the given host names and
  IP addresses (subject alternative names) plus, by default, the loopback names
  (``localhost``, ``127.0.0.1``, ``::1``) so the same material serves a deployment on this
  machine; signed by the CA, 2 years;
- ``supernodes/node-<i>`` / ``node-<i>.pub``: each SuperNode's authentication key pair in
  OpenSSH format (EC P-384, what ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read);
- ``checkpoint_ed25519.pem``: the server's checkpoint-signing key (see ``signing.py``).

Private keys are written with mode 0600. Existing files are never overwritten silently.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_ext.security.signing import load_or_create_signing_key

_CURVE = ec.SECP384R1()
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class DeploymentMaterial:
    """Paths of the generated files."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def signing_key(self) -> Path:
        return self.root / "checkpoint_ed25519.pem"

    def node_key(self, index: int) -> Path:
        """Private key of SuperNode ``index`` (OpenSSH format)."""
        return self.root / "supernodes" / f"node-{index}"

    def node_public_key(self, index: int) -> Path:
        """Public key of SuperNode ``index`` (OpenSSH format), to register on the SuperLink."""
        return self.root / "supernodes" / f"node-{index}.pub"

    def num_nodes(self) -> int:
        """How many SuperNode key pairs the directory holds."""
        return len(list((self.root / "supernodes").glob("node-*.pub")))

    def server_hosts(self) -> list[str]:
        """Host names and IP addresses the SuperLink certificate is valid for (its SANs)."""
        cert = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(name.value) for name in sans]


def generate_material(
    out_dir: str | Path,
    *,
    hosts: list[str],
    num_nodes: int,
    overwrite: bool = False,
    loopback: bool = True,
) -> DeploymentMaterial:
    """Write CA, server certificate for ``hosts``, ``num_nodes`` node key pairs, signing key.

    ``loopback=True`` (default) adds ``localhost``, ``127.0.0.1`` and ``::1`` to the
    certificate's names after ``hosts``: a SuperLink on another machine is still only
    reachable by the names in ``hosts``, and one on this machine works without new material.
    """
    hosts = _unique([*hosts, *(LOOPBACK_HOSTS if loopback else ())])
    if not hosts:
        raise ValueError("hosts must name at least one host name or IP address of the SuperLink")
    if not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes must be an integer >= 0, got {num_nodes!r}")
    material = DeploymentMaterial(Path(out_dir))
    if material.ca_cert.exists() and not overwrite:
        raise FileExistsError(
            f"{material.ca_cert} exists; choose another directory or pass overwrite=True "
            "(every SuperNode then needs the new CA certificate)"
        )
    (material.root / "supernodes").mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(_CURVE)
    ca_cert = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(_CURVE)
    server_cert = _server_certificate(server_key, ca_key, ca_cert, hosts)
    _write(material.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(material.root / "ca.key", _pem_private(ca_key), private=True)
    _write(material.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write(material.server_key, _pem_private(server_key), private=True)
    for i in range(num_nodes):
        write_node_key_pair(material.node_key(i), material.node_public_key(i))
    load_or_create_signing_key(material.signing_key)
    return material


def write_node_key_pair(private_path: Path, public_path: Path) -> None:
    """An EC P-384 key pair in OpenSSH format (Flower's SuperNode authentication keys)."""
    key = ec.generate_private_key(_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(private_path, private, private=True)
    _write(public_path, public + b"\n")


def _normal(host: str) -> str:
    """One spelling per host: IP addresses in canonical form, names lower-case."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host.lower().rstrip(".")


def _unique(hosts: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for host in hosts:
        if _normal(host) not in seen:
            seen.add(_normal(host))
            out.append(host)
    return out


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl-ext deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    start, end = _validity(3650)
    name = _name("fl-ext CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _CA_USAGE,
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    start, end = _validity(730)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if private:
        path.chmod(0o600)
