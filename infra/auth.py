"""Bearer-JWT checks for the sessions API: pure verification, no web framework, unit-tested alone.

The algorithms come from the settings, never from the token: the token's `alg` header only picks
one of the allowed ones, and the key is chosen by that algorithm's family (the HMAC secret for HS*,
the public key for RS*/PS*/ES*/EdDSA), so a token signed with HS256 using the public key as the
secret (the classic algorithm-confusion attack) is refused. `none` is refused even if configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

REALM = "geodispatch"
# Clock skew tolerated on exp/nbf/iat between the token issuer and this worker.
DEFAULT_LEEWAY_S = 30.0
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)


class AuthConfigError(ValueError):
    """The access settings cannot work (say, a public key but only HS* algorithms allowed)."""


class AuthError(Exception):
    """A request that may not pass: the HTTP status (401 or 403), an RFC 6750 error code, why."""

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{status} {error}: {description}")

    @property
    def www_authenticate(self) -> str:
        """The WWW-Authenticate header value; a bare challenge when no credentials came at all."""
        if self.error == "missing_token":
            return f'Bearer realm="{REALM}"'
        description = self.description.replace('"', "'")
        return f'Bearer realm="{REALM}", error="{self.error}", error_description="{description}"'

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.description, "status": self.status}


def _unauthorized(description: str, error: str = "invalid_token") -> AuthError:
    return AuthError(401, error, description)


def _forbidden(description: str, error: str = "invalid_token") -> AuthError:
    return AuthError(403, error, description)


def _load_public_key(value: str) -> str:
    """A PEM text as is, or the contents of the file it names."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        # A PEM passed through a one-line environment variable often arrives with literal "\n"s.
        return text.replace("\\n", "\n")
    path = Path(text).expanduser()
    if path.is_file():
        return path.read_text()
    raise AuthConfigError("jwt_public_key is neither a PEM block nor a readable file")


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    """OAuth scopes from `scope` (space-separated, RFC 8693) or `scp` (a list or a string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list | tuple):
            found.update(str(item) for item in value)
    return found


@dataclass(frozen=True)
class Verifier:
    """Checks one Authorization header; built from the settings once per worker."""

    algorithms: tuple[str, ...]
    secret: str | None = None
    public_key: str | None = None
    audience: str | None = None
    issuer: str | None = None
    scope: str | None = None
    leeway_s: float = DEFAULT_LEEWAY_S

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise AuthConfigError("jwt_algorithms is empty")
        unknown = [a for a in self.algorithms if a not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
        if unknown:
            # Also catches "none": an unsigned token is never acceptable.
            raise AuthConfigError(f"jwt_algorithms has unsupported or unsafe entries: {unknown}")
        if self.secret is None and self.public_key is None:
            raise AuthConfigError("neither jwt_secret nor jwt_public_key is set")
        usable = [a for a in self.algorithms if self._key_for(a) is not None]
        if not usable:
            raise AuthConfigError(
                f"no algorithm of {list(self.algorithms)} fits the configured key "
                "(HS* need jwt_secret; RS*/PS*/ES*/EdDSA need jwt_public_key)"
            )

    @classmethod
    def from_settings(cls, settings: Any) -> Verifier | None:
        """None when access is open (no secret and no public key configured)."""
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        public_key = settings.jwt_public_key or None
        if not secret and not public_key:
            return None
        return cls(
            algorithms=tuple(settings.jwt_algorithms),
            secret=secret or None,
            public_key=_load_public_key(public_key) if public_key else None,
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            scope=getattr(settings, "jwt_scope", None) or None,
            leeway_s=settings.jwt_leeway_s,
        )

    def _key_for(self, algorithm: str) -> str | None:
        if algorithm in HMAC_ALGORITHMS:
            return self.secret
        if algorithm in ASYMMETRIC_ALGORITHMS:
            return self.public_key
        return None

    def verify_header(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or AuthError: 401 when missing, malformed, badly signed or expired,
        403 when valid but for another audience or issuer, or without the required scope."""
        if authorization is None or not authorization.strip():
            raise _unauthorized("a bearer token is required", error="missing_token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise _unauthorized("Authorization header must be 'Bearer <token>'", error="invalid_request")
        return self.verify(token)

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"malformed token ({exc})") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise _unauthorized(f"algorithm {algorithm!r} is not allowed")
        key = self._key_for(algorithm)
        if key is None:
            raise _unauthorized(f"no key configured for algorithm {algorithm}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim in ("aud", "iss"):
                raise _forbidden(f"token has no {exc.claim!r} claim") from None
            raise _unauthorized(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise _forbidden("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise _forbidden("token is from another issuer") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("token not valid yet") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("signature verification failed") from None
        except jwt.PyJWTError as exc:  # every other decode failure: malformed, bad key type, ...
            raise _unauthorized(f"invalid token ({type(exc).__name__})") from None
        if self.scope is not None and self.scope not in _scopes(claims):
            raise _forbidden(f"token lacks the {self.scope!r} scope", error="insufficient_scope")
        return claims
