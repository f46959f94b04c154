"""Client channels to the service: one address or several replicas (round robin over the
healthy ones), plain or TLS (mutual with a client certificate), and the bearer token on every
call. Light: grpc only, for the CLI clients, benches and tests."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

_READS = ("RankCandidates", "CompareCandidates", "GetCandidate", "ListPostings", "GetModelInfo")

SPREAD_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                "name": [{"service": "ranker.v1.CandidateRanker", "method": m} for m in _READS],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
"""Calls spread round robin over the target's addresses, each watched with the standard health
service (grpc.health.v1 `Watch`, run by gRPC's core: no code of ours): a replica that reports
NOT_SERVING, or whose connection fails, gets no calls until it serves again. A read that fails
UNAVAILABLE (its replica died under it, or refused as stale) is tried again, on the next replica;
writes are not retried by the channel (the caller decides)."""

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")


def _ip_family(address: str) -> str:
    """`ipv4` or `ipv6` for an `ip:port` (IPv6 in brackets); ValueError for a host name."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return f"ipv{ipaddress.ip_address(host).version}"
    except ValueError:
        raise ValueError(
            f"{address!r}: several addresses must be IP literals (`10.0.0.1:50051,"
            "10.0.0.2:50051`); for host names use one DNS name that resolves to every replica "
            "(`dns:///ranker.internal:50051`), or a load balancer such as Envoy"
        ) from None


def channel_target(address: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target of an address setting, and whether calls spread over several replicas.

    One `host:port` is kept as it is (one server, no balancing). Several, comma-separated or as
    a list, become one `ipv4:`/`ipv6:` target (gRPC resolves it to every address); a target
    URI (`dns:///name:port`, `ipv4:a:p,b:p`) is kept and spread over what it resolves to.
    """
    parts = [address] if isinstance(address, str) else list(address)
    items = [p.strip() for part in parts for p in part.split(",") if p.strip()]
    if not items:
        raise ValueError("no service address given; pass host:port (or several, comma-separated)")
    if items[0].startswith(_SCHEMES):
        return ",".join(items), True
    if len(items) == 1:
        return items[0], False
    families = {_ip_family(a) for a in items}
    if len(families) > 1:
        raise ValueError(
            f"{','.join(items)}: mixes IPv4 and IPv6 addresses; gRPC takes one family per list"
        )
    return f"{families.pop()}:{','.join(items)}", True


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
    address: str | Sequence[str],
    *,
    token: str | None = None,
    tls: bool = False,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address`: one server, or several replicas with calls spread round robin
    over the healthy ones (`channel_target`, `SPREAD_SERVICE_CONFIG`). TLS when `tls` or any PEM
    file is given (system roots without `ca_file`); `cert_file` + `key_file` present a client
    certificate (mutual TLS).

    Raises ValueError when a file cannot be read or the addresses cannot be combined.
    """
    target, spread = channel_target(address)
    if spread:
        options = [*options, ("grpc.service_config", SPREAD_SERVICE_CONFIG)]
    if tls or ca_file is not None or cert_file is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_file, "CA file"),
            private_key=_read(key_file, "client key"),
            certificate_chain=_read(cert_file, "client certificate"),
        )
        channel = grpc.secure_channel(target, credentials, options=list(options))
    else:
        channel = grpc.insecure_channel(target, options=list(options))
    if token:
        return grpc.intercept_channel(channel, _BearerToken(token))
    return channel
