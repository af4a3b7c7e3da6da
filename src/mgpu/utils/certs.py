"""``mgpu certs``: a self-signed CA and a server certificate, for a lab that has no CA.

Writes into one directory (0700):

* ``ca.pem`` (the CA's certificate: give it to clients and nodes, ``--ca`` / ``MGPU_CA``)
  and ``ca.key`` (its key, 0600: keep it to sign more, or delete it);
* ``server.pem`` (the master's certificate, then the CA's) and ``server.key`` (0600): the
  master's ``--tls-cert`` and ``--tls-key``.

The server certificate names the hosts clients dial (DNS names and IP addresses, as
subject alternative names). Keys are ECDSA P-256; the CA lasts ten years, the server
certificate two. Uses the ``cryptography`` package, imported only here.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from mgpu.core.errors import ConfigError, MgpuError

CA_DAYS = 3650
SERVER_DAYS = 730


def default_hosts() -> list[str]:
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    fqdn = socket.getfqdn()
    if fqdn not in names:
        names.insert(1, fqdn)
    return names


def make_certs(out: str | Path, hosts: list[str] | None = None) -> str:
    """Write the CA and the server certificate for ``hosts`` into ``out``; return what to
    tell the user. Refuses to overwrite an existing CA key (it may have signed others)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise MgpuError("mgpu certs needs the cryptography package: pip install "
                        "cryptography") from None
    directory = Path(out).expanduser()
    hosts = hosts or default_hosts()
    if (directory / "ca.key").exists():
        raise ConfigError(f"{directory / 'ca.key'} exists: pass another --dir (or remove "
                          "the old files first)")
    sans: list[x509.GeneralName] = []
    for name in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() or c == "/" for c in name):
                raise ConfigError(f"--host {name!r} is not a host name or address") from None
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mgpu CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mgpu")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(directory / "ca.key", pem_key(ca_key), 0o600)
        _write(directory / "ca.pem", ca_pem, 0o644)
        _write(directory / "server.key", pem_key(key), 0o600)
        _write(directory / "server.pem",
               cert.public_bytes(serialization.Encoding.PEM) + ca_pem, 0o644)
    except OSError as e:
        raise MgpuError(f"cannot write the certificates to {directory}: {e}") from e
    d = directory
    return (
        f"Wrote a CA ({d / 'ca.pem'}, key {d / 'ca.key'}) and a certificate for "
        f"{', '.join(hosts)} ({d / 'server.pem'}, key {d / 'server.key'}).\n"
        f"Master:  mgpu server --host 0.0.0.0 --tls-cert {d / 'server.pem'} "
        f"--tls-key {d / 'server.key'}\n"
        f"Clients and nodes: copy {d / 'ca.pem'} and pass --ca FILE (or set MGPU_CA=FILE).\n"
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
