"""JWT bearer authentication of the write routes, on Litestar's JWTAuth.

HS256 with `JWT_SECRET` by default; RS256 / ES256 verified with the PEM public key of
`JWT_PUBLIC_KEY_FILE`. Only the configured algorithm is accepted, so `alg: none` and
algorithm confusion (an HS256 token "signed" with the public key) fail verification. `exp` and
`sub` are required; `nbf` / `iat` are checked when present, `aud` / `iss` when configured, each
with `JWT_LEEWAY` seconds of clock skew. Only the `Bearer` scheme (any case) carries a token:
`Authorization: Token <jwt>` or a bare `<jwt>` authenticates nobody. The `role` claim says
what the subject may do: `artist` (its `sub` is the artist's id: create and mint its own
albums) or `admin`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ImproperlyConfiguredException,
    NotAuthorizedException,
    PermissionDeniedException,
)
from litestar.middleware import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.security.jwt.token import JWTDecodeOptions

from discograph.errors import ConfigError
from discograph.settings import Settings

Role = Literal["artist", "admin"]
ROLES: tuple[Role, ...] = ("artist", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and role (`artist_id` for artists)."""

    subject: str
    role: Role
    artist_id: uuid.UUID | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDeniedException(detail="this needs the admin role")


@dataclass
class LeewayToken(Token):
    """Litestar's token, decoded by PyJWT with a clock-skew leeway (per app: `leeway`)."""

    leeway: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        # PyJWT has verified exp / nbf / iat with the leeway; Litestar's own check would
        # refuse a token inside the leeway again, so only the subject is checked here.
        if not self.sub:
            raise ImproperlyConfiguredException("sub must be a non-empty string")

    @classmethod
    def decode_payload(
        cls,
        encoded_token: str,
        secret: str,
        algorithms: list[str],
        issuer: Any = None,
        audience: Any = None,
        options: JWTDecodeOptions | None = None,
    ) -> Any:
        payload = jwt.decode(
            jwt=encoded_token,
            key=secret,
            algorithms=algorithms,
            issuer=issuer,
            audience=audience,
            options=dict(options or {}),  # type: ignore[arg-type]
            leeway=cls.leeway,
        )
        # `iat` is optional (PyJWT has checked it when present), but Litestar's Token reads
        # it unconditionally: without one, the token counts as issued when it is checked.
        payload.setdefault("iat", int(time.time()))
        return payload


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case), else None."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class BearerAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, which takes whatever follows the first space of the header
    as the token, held to the Bearer scheme."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get(self.auth_header)
        if not header:
            raise NotAuthorizedException("No JWT token found in request header")
        token = bearer_token(header)
        if token is None:
            raise NotAuthorizedException("Authorization must be: Bearer <token>")
        return await self.authenticate_token(encoded_token=token, connection=connection)


def _principal(token: Token) -> Principal | None:
    role = token.extras.get("role")
    if role not in ROLES:
        return None  # a token without a known role authenticates nobody: 401
    artist_id = None
    if role == "artist":
        try:
            artist_id = uuid.UUID(token.sub)
        except ValueError:
            return None
    return Principal(subject=token.sub, role=role, artist_id=artist_id)


async def retrieve_principal(token: Token, _connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
    return _principal(token)


def verification_key(settings: Settings) -> str:
    """The secret (HS256) or PEM public key (RS256 / ES256) tokens are checked against."""
    if settings.jwt_algorithm == "HS256":
        if settings.jwt_secret is None:
            raise ConfigError("JWT_SECRET is not set (the write API needs it to check tokens)")
        return settings.jwt_secret.reveal()
    assert settings.jwt_public_key_file is not None  # Settings checks the pair
    try:
        return Path(settings.jwt_public_key_file).read_text()
    except OSError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY_FILE cannot be read: {exc.strerror}") from None


def jwt_auth(settings: Settings) -> JWTAuth[Principal, LeewayToken]:
    token_cls: type[LeewayToken] = dataclass(
        type("ApiToken", (LeewayToken,), {"leeway": float(settings.jwt_leeway)})
    )
    return JWTAuth[Principal, LeewayToken](
        token_secret=verification_key(settings),
        retrieve_user_handler=retrieve_principal,
        algorithm=settings.jwt_algorithm,
        token_cls=token_cls,
        authentication_middleware_class=BearerAuthenticationMiddleware,
        require_claims=["exp", "sub"],
        accepted_audiences=[settings.jwt_audience] if settings.jwt_audience else None,
        accepted_issuers=[settings.jwt_issuer] if settings.jwt_issuer else None,
        description="JWT bearer: `discograph token --sub ID --role artist|admin` makes one",
    )


def issue_token(
    settings: Settings,
    *,
    subject: str,
    role: Role,
    ttl: float = 3600.0,
    private_key: str | None = None,
) -> str:
    """A signed token for `subject` (dev tool `discograph token`, tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "role": role, "iat": now, "exp": now + int(ttl)}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_algorithm == "HS256":
        key = verification_key(settings)
    elif private_key is None:
        raise ConfigError(f"JWT_ALGORITHM={settings.jwt_algorithm} tokens need the private key")
    else:
        key = private_key
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)


class TokenRefused(Exception):
    """A token the feed does not accept: `forbidden` when it is valid but grants no role."""

    def __init__(self, reason: str, *, forbidden: bool = False) -> None:
        super().__init__(reason)
        self.forbidden = forbidden


def token_verifier(settings: Settings) -> Any:
    """Check a bearer token outside the HTTP middleware (the websocket feed), with exactly the
    write routes' rules; returns `verify(token) -> Principal`, raising TokenRefused."""
    auth = jwt_auth(settings)

    def verify(encoded: str) -> Principal:
        try:
            token = auth.token_cls.decode(
                encoded_token=encoded,
                secret=auth.token_secret,
                algorithm=auth.algorithm,
                audience=auth.accepted_audiences,
                issuer=auth.accepted_issuers,
                require_claims=auth.require_claims,
                verify_exp=auth.verify_expiry,
                verify_nbf=auth.verify_not_before,
                strict_audience=auth.strict_audience,
            )
        except (NotAuthorizedException, ImproperlyConfiguredException) as exc:
            raise TokenRefused(f"invalid token: {str(exc.detail)[:60]}") from None
        principal = _principal(token)
        if principal is None:
            raise TokenRefused("the token grants no known role", forbidden=True)
        return principal

    return verify
