"""Who may call what: TLS credentials, bearer tokens checked per RPC scope, exposure refusal.

Health stays open (load balancers probe it without credentials); reflection needs a valid
token of any scope when tokens are required; every CandidateRanker method needs its scope.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from ranker.config import Settings
from ranker.errors import PermissionDenied, RankerError, Unauthenticated
from ranker.metrics import ServiceMetrics
from ranker.tokens import Scope, Token, TokenFile
from ranker.transport.servicer import SERVICE_NAME
from ranker.transport.status import status_for

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})

RPC_SCOPES: dict[str, Scope] = {
    "GetCandidate": Scope.READ,
    "ListPostings": Scope.READ,
    "GetModelInfo": Scope.READ,
    "RankCandidates": Scope.RANK,
    "UpsertCandidates": Scope.WRITE,
    "UpsertPostings": Scope.WRITE,
    "RecordOutcomes": Scope.WRITE,
    "DeleteCandidates": Scope.ERASE,
}
"""The scope each CandidateRanker method needs (`admin` allows all)."""

ANONYMOUS = "anonymous"
"""Who a call was made by when the server does not require tokens."""


class ExposureRefused(RuntimeError):
    """The server would expose its data without TLS and tokens; the message says what to set."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name resolving elsewhere, or "" / "0.0.0.0": all interfaces


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ExposureRefused(
            f"cannot read the {what} {path} ({e.strerror}); fix the path"
        ) from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set) from the settings' PEM files; None when TLS is off."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = _read(settings.tls_key_file, "TLS key (RANKER_TLS_KEY_FILE)")
    cert = _read(settings.tls_cert_file, "TLS certificate (RANKER_TLS_CERT_FILE)")
    ca = (
        _read(settings.tls_client_ca_file, "client CA (RANKER_TLS_CLIENT_CA_FILE)")
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class AccessPolicy:
    """Checks a call's bearer token against the scope its method needs."""

    def __init__(self, tokens: TokenFile, required: bool) -> None:
        self.tokens = tokens
        self.required = required

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """Tokens are required when the settings say so or the token file holds any.

        Decided once at start: revoking the last token later locks callers out rather than
        opening the service.
        """
        tokens = TokenFile(settings.resolved_tokens_file)
        have = bool(tokens.tokens())
        if settings.require_tokens and not have:
            raise ExposureRefused(
                f"RANKER_REQUIRE_TOKENS is set but {tokens.path} holds no token; create one "
                "first: `ranker tokens create NAME --scope admin`"
            )
        return cls(tokens, settings.require_tokens or have)

    def check_exposure(self, settings: Settings) -> None:
        """Refuse to serve a non-loopback address without both TLS and tokens (unless allowed)."""
        if is_loopback(settings.host) or settings.allow_insecure:
            return
        missing = [
            what for what, ok in (("TLS", settings.tls), ("bearer tokens", self.required)) if not ok
        ]
        if missing:
            raise ExposureRefused(
                f"refusing to serve {settings.host!r} (reachable from other machines) without "
                f"{' and '.join(missing)}: anyone who reached it could read and erase every CV. "
                "Set RANKER_TLS_CERT_FILE and RANKER_TLS_KEY_FILE, create a token with `ranker "
                "tokens create NAME --scope admin` (README, Security), or set "
                "RANKER_ALLOW_INSECURE=true when a proxy in front does both"
            )

    def authorize(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> Token | None:
        """The caller's token (None when tokens are not required or the service is open).

        Raises Unauthenticated (no or unknown token) or PermissionDenied (wrong scope).
        """
        service, _, name = method.lstrip("/").rpartition("/")
        if service in OPEN_SERVICES or not self.required:
            return None
        token = self.identify(metadata)
        if token is None:
            raise Unauthenticated(
                "this call needs a bearer token: send metadata `authorization: Bearer <token>` "
                "(`ranker query --token ...`); an admin creates one with `ranker tokens create`"
            )
        scope = RPC_SCOPES.get(name) if service == SERVICE_NAME else None
        if scope is not None and not token.allows(scope):
            raise PermissionDenied(
                f"token {token.name!r} has scope {token.scope_names}; {name} needs {scope.value} "
                f"(or admin). Use a token with that scope, or create one: `ranker tokens create "
                f"NAME --scope {scope.value}`"
            )
        return token

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> Token | None:
        """The token the call carries, or None (no header, not Bearer, or unknown)."""
        for key, value in metadata or ():
            if key.lower() != "authorization":
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            kind, _, secret = text.strip().partition(" ")
            if kind.lower() == "bearer" and secret.strip():
                return self.tokens.verify(secret.strip())
        return None

    def actor(self, metadata: Sequence[tuple[str, Any]] | None) -> str:
        """Who made a call, for erasure and admin records: a token's name, never its secret."""
        token = self.identify(metadata)
        if token is not None:
            return f"token:{token.name}"
        return ANONYMOUS


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as `handler` that only aborts with `code`."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover (abort raises): makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Runs `AccessPolicy.authorize` before every call; refused calls never reach a handler."""

    def __init__(self, policy: AccessPolicy, metrics: ServiceMetrics) -> None:
        self.policy = policy
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        try:
            self.policy.authorize(method, handler_call_details.invocation_metadata)
        except RankerError as e:
            if handler is None:
                return handler
            code = status_for(e)
            rpc = method.rpartition("/")[2]
            self.metrics.requests.labels(rpc=rpc, code=code.name).inc()
            self.metrics.errors.labels(rpc=rpc, code=code.name).inc()
            return _refusal(handler, code, str(e))
        return handler
