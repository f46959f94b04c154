"""Client channels to the service: plain or TLS (mutual with a client certificate), and the
bearer token on every call. Light: grpc only, for the CLI clients, benches and tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc


class _Fields(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _CallDetails(_Fields, grpc.ClientCallDetails):  # type: ignore[misc]
    """The call's details with our metadata (grpc's own class is private)."""


class _BearerToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every unary call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        d = client_call_details
        details = _CallDetails(
            d.method,
            d.timeout,
            [*(d.metadata or ()), self._header],
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )
        return continuation(details, request)


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path} ({e.strerror}); fix the path") from None


def client_channel(
    address: str,
    *,
    token: str | None = None,
    tls: bool = False,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address`: TLS when `tls` or any PEM file is given (system roots without
    `ca_file`); `cert_file` + `key_file` present a client certificate (mutual TLS).

    Raises ValueError when a file cannot be read.
    """
    if tls or ca_file is not None or cert_file is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_file, "CA file"),
            private_key=_read(key_file, "client key"),
            certificate_chain=_read(cert_file, "client certificate"),
        )
        channel = grpc.secure_channel(address, credentials, options=list(options))
    else:
        channel = grpc.insecure_channel(address, options=list(options))
    if token:
        return grpc.intercept_channel(channel, _BearerToken(token))
    return channel
