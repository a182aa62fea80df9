"""Bearer-JWT verification: what passes, and which status and error everything else gets."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from infra.auth import AuthConfigError, AuthError, Verifier
from infra.settings import Settings

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 4
AUD = "geodispatch-api"
ISS = "https://auth.example.test/"


def claims(**overrides):
    base = {"sub": "ops-1", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 300, "scope": "sessions:read"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_verifier(**kwargs) -> Verifier:
    return Verifier(algorithms=("HS256",), secret=SECRET, audience=AUD, issuer=ISS, **kwargs)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(verifier: Verifier, header: str | None) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verifier.verify_header(header)
    return caught.value


def rsa_pair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return key, public


def test_a_valid_token_passes_and_gives_its_claims():
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert hs_verifier().verify_header(bearer(token))["sub"] == "ops-1"


def test_the_scheme_is_case_insensitive():
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert hs_verifier().verify_header(f"bearer {token}")["sub"] == "ops-1"


def test_a_missing_header_is_401_with_a_bare_challenge():
    error = refused(hs_verifier(), None)
    assert error.status == 401
    assert error.www_authenticate == 'Bearer realm="geodispatch"'
    assert refused(hs_verifier(), "  ").status == 401


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "token"])
def test_a_malformed_header_is_401(header):
    error = refused(hs_verifier(), header)
    assert error.status == 401
    assert error.error == "invalid_request"
    assert 'error="invalid_request"' in error.www_authenticate


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30"])
def test_a_malformed_token_is_401(token):
    error = refused(hs_verifier(), bearer(token))
    assert (error.status, error.error) == (401, "invalid_token")


def test_an_expired_token_is_401():
    token = jwt.encode(claims(exp=int(time.time()) - 3600), SECRET, algorithm="HS256")
    error = refused(hs_verifier(), bearer(token))
    assert error.status == 401
    assert "expired" in error.description
    assert 'error="invalid_token"' in error.www_authenticate


def test_expiry_within_the_leeway_passes():
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    assert hs_verifier().verify_header(bearer(token))


def test_a_token_without_exp_is_401():
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    assert refused(hs_verifier(), bearer(token)).status == 401


def test_a_token_not_valid_yet_is_401():
    token = jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256")
    assert refused(hs_verifier(), bearer(token)).status == 401


def test_alg_none_is_refused():
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        error = refused(hs_verifier(), bearer(token))
        assert error.status == 401


def test_alg_none_cannot_even_be_configured():
    with pytest.raises(AuthConfigError):
        Verifier(algorithms=("none",), secret=SECRET)
    with pytest.raises(AuthConfigError):
        Verifier(algorithms=("HS256", "none"), secret=SECRET)


def test_an_algorithm_outside_the_allow_list_is_401():
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    error = refused(hs_verifier(), bearer(token))
    assert error.status == 401
    assert "HS512" in error.description


def test_a_token_signed_with_another_key_is_401():
    token = jwt.encode(claims(), "another-secret-" + "x" * 64, algorithm="HS256")
    error = refused(hs_verifier(), bearer(token))
    assert error.status == 401
    assert "signature" in error.description


def test_a_tampered_payload_is_401():
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    forged = _b64(json.dumps(claims(sub="admin")).encode())
    assert refused(hs_verifier(), bearer(f"{header}.{forged}.{signature}")).status == 401


def test_a_wrong_audience_is_403():
    token = jwt.encode(claims(aud="another-api"), SECRET, algorithm="HS256")
    error = refused(hs_verifier(), bearer(token))
    assert error.status == 403
    assert "audience" in error.description


def test_a_missing_audience_is_403_when_one_is_required():
    token = jwt.encode(claims(aud=None), SECRET, algorithm="HS256")
    assert refused(hs_verifier(), bearer(token)).status == 403


def test_a_wrong_issuer_is_403():
    token = jwt.encode(claims(iss="https://evil.example.test/"), SECRET, algorithm="HS256")
    error = refused(hs_verifier(), bearer(token))
    assert error.status == 403
    assert "issuer" in error.description


def test_audience_and_issuer_are_not_checked_when_not_configured():
    verifier = Verifier(algorithms=("HS256",), secret=SECRET)
    token = jwt.encode(claims(aud="anything", iss="anyone"), SECRET, algorithm="HS256")
    assert verifier.verify_header(bearer(token))


def test_a_missing_scope_is_403_insufficient_scope():
    verifier = hs_verifier(scope="sessions:read")
    assert verifier.verify_header(bearer(jwt.encode(claims(), SECRET, algorithm="HS256")))
    assert verifier.verify_header(bearer(jwt.encode(claims(scope=None, scp=["x", "sessions:read"]), SECRET)))
    error = refused(verifier, bearer(jwt.encode(claims(scope="orders:write"), SECRET, algorithm="HS256")))
    assert (error.status, error.error) == (403, "insufficient_scope")
    assert 'error="insufficient_scope"' in error.www_authenticate


def test_rs256_with_a_public_key():
    private, public = rsa_pair()
    verifier = Verifier(algorithms=("RS256",), public_key=public, audience=AUD, issuer=ISS)
    assert verifier.verify_header(bearer(jwt.encode(claims(), private, algorithm="RS256")))
    other, _ = rsa_pair()
    assert refused(verifier, bearer(jwt.encode(claims(), other, algorithm="RS256"))).status == 401


def test_es256_with_a_public_key():
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = Verifier(algorithms=("ES256",), public_key=public)
    assert verifier.verify_header(bearer(jwt.encode(claims(), private, algorithm="ES256")))


def test_hs256_signed_with_the_public_key_is_refused():
    """Algorithm confusion: the attacker knows the public key and uses it as an HMAC secret."""
    _, public = rsa_pair()
    verifier = Verifier(algorithms=("RS256",), public_key=public)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    signature = _b64(hmac.new(public.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    assert refused(verifier, bearer(f"{header}.{body}.{signature}")).status == 401


def test_a_public_key_may_be_a_file(tmp_path):
    private, public = rsa_pair()
    path = tmp_path / "jwt.pub.pem"
    path.write_text(public)
    settings = Settings(jwt_public_key=str(path), jwt_algorithms="RS256,ES256")
    verifier = Verifier.from_settings(settings)
    assert verifier.verify_header(bearer(jwt.encode(claims(), private, algorithm="RS256")))


def test_a_public_key_may_come_on_one_line_with_escaped_newlines():
    private, public = rsa_pair()
    verifier = Verifier.from_settings(Settings(jwt_public_key=public.replace("\n", "\\n"), jwt_algorithms="RS256"))
    assert verifier.verify_header(bearer(jwt.encode(claims(), private, algorithm="RS256")))


def test_settings_without_a_secret_or_key_leave_the_api_open():
    assert Verifier.from_settings(Settings()) is None


def test_settings_build_a_verifier_from_the_environment(monkeypatch):
    monkeypatch.setenv("GEODISPATCH_JWT_SECRET", SECRET)
    monkeypatch.setenv("GEODISPATCH_JWT_ALGORITHMS", "HS256, HS384")
    monkeypatch.setenv("GEODISPATCH_JWT_AUDIENCE", AUD)
    verifier = Verifier.from_settings(Settings())
    assert verifier.algorithms == ("HS256", "HS384")
    assert verifier.verify_header(bearer(jwt.encode(claims(), SECRET, algorithm="HS384")))


def test_a_key_that_fits_no_allowed_algorithm_is_a_config_error():
    _, public = rsa_pair()
    with pytest.raises(AuthConfigError):
        Verifier.from_settings(Settings(jwt_public_key=public))  # only HS256 allowed by default
    with pytest.raises(AuthConfigError):
        Verifier(algorithms=("HS256",))
