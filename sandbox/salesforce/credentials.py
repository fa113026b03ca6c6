"""Secrets of the simulated org, made once per state directory and kept there.

A restart keeps the same credentials, CA and JWT key, so a configured kashforce keeps working.
"""

import json
import secrets
import ssl
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.salesforce import ids, schema

USERNAME = "integration@kashforce.sandbox"


def load_or_create(directory: Path) -> dict:
    path = directory / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {
        "username": USERNAME,
        "password": "Sandbox-" + secrets.token_urlsafe(12),
        "security_token": secrets.token_hex(12).upper(),
        "consumer_key": "3MVG9" + secrets.token_urlsafe(60).replace("-", "").replace("_", "")[:80],
        "consumer_secret": secrets.token_hex(32).upper(),
        "organization_id": ids.make_id(schema.ORG_PREFIX, secrets.randbelow(62**6)),
        "user_id": ids.make_id(schema.USER_PREFIX, secrets.randbelow(62**6)),
    }
    _write_private(path, json.dumps(creds, indent=2))
    return creds


def server_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """(server SSL context, CA PEM path); the certificate covers 127.0.0.1 and localhost."""
    ca_file, chain, key = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    if not (ca_file.exists() and chain.exists() and key.exists()):
        ca = trustme.CA(organization_name="kashforce sandbox")
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca.cert_pem.write_to_path(str(ca_file))
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        _write_private(key, cert.private_key_pem.bytes().decode())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    return context, ca_file


def jwt_key_pair(directory: Path) -> tuple[Path, bytes]:
    """(private key PEM path for the client, public key PEM for verifying assertions)."""
    private_file = directory / "jwt_private_key.pem"
    if not private_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(private_file, pem.decode())
    private_key = serialization.load_pem_private_key(private_file.read_bytes(), password=None)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_file, public_pem


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)
