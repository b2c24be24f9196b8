import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_ext.security import (
    SignatureError,
    generate_material,
    load_or_create_signing_key,
    load_verify_key,
    sign_bytes,
    verify_bytes,
)
from fl_ext.security.signing import public_key_pem


@pytest.fixture
def material(tmp_path):
    return generate_material(tmp_path / "m", hosts=["127.0.0.1", "superlink.example"], num_nodes=2)


def test_server_certificate_is_issued_by_the_ca_for_the_given_hosts(material):
    ca = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # the given hosts first, then the loopback names not given (127.0.0.1 only once)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example", "localhost"]
    assert material.server_hosts() == ["127.0.0.1", "superlink.example", "localhost", "::1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_loopback_names_are_added_by_default_and_can_be_left_out(tmp_path):
    hosts = ["superlink.lan", "10.0.0.5"]  # the README's example: a SuperLink elsewhere
    default = generate_material(tmp_path / "d", hosts=hosts, num_nodes=0)
    assert default.server_hosts() == [*hosts, "localhost", "127.0.0.1", "::1"]
    remote_only = generate_material(tmp_path / "r", hosts=hosts, num_nodes=0, loopback=False)
    assert remote_only.server_hosts() == hosts
    local_only = generate_material(tmp_path / "l", hosts=[], num_nodes=0)
    assert local_only.server_hosts() == ["localhost", "127.0.0.1", "::1"]
    with pytest.raises(ValueError, match="hosts"):
        generate_material(tmp_path / "x", hosts=[], num_nodes=0, loopback=False)


def test_node_keys_are_openssh_p384_pairs_and_private_files_are_0600(material):
    assert material.num_nodes() == 2
    for i in range(2):
        private = serialization.load_ssh_private_key(material.node_key(i).read_bytes(), None)
        public = serialization.load_ssh_public_key(material.node_public_key(i).read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert public.public_numbers() == private.public_key().public_numbers()
    for path in (
        material.server_key,
        material.root / "ca.key",
        material.node_key(0),
        material.signing_key,
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_existing_material_is_not_overwritten_by_accident(material):
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_material(material.root, hosts=["127.0.0.1"], num_nodes=1)
    with pytest.raises(ValueError, match="hosts"):
        generate_material(material.root / "x", hosts=[], num_nodes=1, loopback=False)


def _serve_once(material, port_box, ready, connections=2):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(material.server_cert, material.server_key)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port_box.append(server.getsockname()[1])
        server.settimeout(10)
        ready.set()
        for _ in range(connections):  # by default one verified client, one refused
            try:
                conn, _ = server.accept()
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                continue


def test_a_real_tls_handshake_verifies_with_the_ca_and_fails_without_it(material):
    port_box, ready = [], threading.Event()
    thread = threading.Thread(target=_serve_once, args=(material, port_box, ready), daemon=True)
    thread.start()
    assert ready.wait(10)
    port = port_box[0]
    trusted = ssl.create_default_context(cafile=str(material.ca_cert))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
    untrusted = ssl.create_default_context()  # system CAs only: our CA is unknown
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(10)


@pytest.mark.parametrize("loopback", [True, False])
def test_material_for_remote_hosts_serves_loopback_only_with_the_loopback_names(tmp_path, loopback):
    material = generate_material(
        tmp_path / "m", hosts=["superlink.lan", "10.0.0.5"], num_nodes=0, loopback=loopback
    )
    port_box, ready = [], threading.Event()
    thread = threading.Thread(target=_serve_once, args=(material, port_box, ready, 1), daemon=True)
    thread.start()
    assert ready.wait(10)
    trusted = ssl.create_default_context(cafile=str(material.ca_cert))
    with socket.create_connection(("127.0.0.1", port_box[0]), timeout=10) as raw:
        if loopback:
            with trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
        else:  # what a local SuperLink / SuperNode hit with the README's hosts before
            with pytest.raises(ssl.SSLCertVerificationError, match=r"not valid for '127\.0\.0\.1'"):
                trusted.wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(10)


def test_signing_key_is_created_once_and_verifies_only_its_own_signatures(tmp_path):
    key = load_or_create_signing_key(tmp_path / "k.pem")
    again = load_or_create_signing_key(tmp_path / "k.pem")
    sig = sign_bytes(key, b"manifest")
    verify_bytes(again.public_key(), b"manifest", sig)
    verify_bytes(load_verify_key(tmp_path / "k.pem"), b"manifest", sig)
    (tmp_path / "pub.pem").write_bytes(public_key_pem(key))
    verify_bytes(load_verify_key(tmp_path / "pub.pem"), b"manifest", sig)
    with pytest.raises(SignatureError, match="does not match"):
        verify_bytes(key.public_key(), b"manifest!", sig)
    with pytest.raises(SignatureError, match="64 bytes"):
        verify_bytes(key.public_key(), b"manifest", sig[:10])


def test_a_key_of_another_type_is_refused(tmp_path):
    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        load_or_create_signing_key(path)
