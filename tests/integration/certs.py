"""Throwaway TLS material for tests: a CA and a server certificate for 127.0.0.1/localhost made with
openssl, plus a PKCS#12 keystore and truststore for the Java broker. Nothing leaves the tmp dir."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    keystore: Path  # PKCS#12: the server key and its chain
    truststore: Path  # PKCS#12: the CA
    password: str


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def make_certs(directory: Path, password: str = "test-store-pass") -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=geodispatch-test-ca", cwd=d)
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=geodispatch-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
             "-name", "broker", "-out", "keystore.p12", "-passout", f"pass:{password}", cwd=d)
    # A truststore holding only a certificate needs keytool (openssl's PKCS#12 has no trusted-cert bag
    # Java recognises).
    truststore = d / "truststore.p12"
    result = subprocess.run(
        ["keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", str(d / "ca.pem"),
         "-keystore", str(truststore), "-storetype", "PKCS12", "-storepass", password],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"keytool failed:\n{result.stdout}\n{result.stderr}")
    return Certs(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
                 d / "keystore.p12", truststore, password)
