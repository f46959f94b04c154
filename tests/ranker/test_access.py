"""Authentication and authorisation: TLS, mutual TLS, scoped bearer tokens, exposure refusal."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from ranker.commands import serving
from ranker.commands import tokens as tokens_commands
from ranker.encoding import TextEncoder
from ranker.registry import ModelRegistry
from ranker.tokens import Scope, TokenFile, secret_digest
from ranker.transport.access import RPC_SCOPES, AccessPolicy, is_loopback
from ranker.transport.channel import client_channel
from ranker.transport.server import StartError
from ranker.v1 import ranker_pb2 as pb
from ranker.v1 import ranker_pb2_grpc as pb_grpc
from tests.fixtures.server import ServerHandle, serving_settings

runner = CliRunner()
StartServer = Callable[..., ServerHandle]


# -- certificates, made here with the openssl command line ------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate it signed, and a client
    certificate of another CA (which the server must refuse)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(
        d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    )
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth")
    _leaf(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth")
    return d


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()  # type: ignore[attr-defined,no-any-return]


# -- TLS and mutual TLS -----------------------------------------------------------------------


def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(
    start_server: StartServer, registry_path: Path, certs: Path
) -> None:
    h = start_server(
        registry_dir=registry_path,
        tls_cert_file=certs / "server.pem",
        tls_key_file=certs / "server.key",
    )
    address = f"127.0.0.1:{h.port}"
    with client_channel(address, ca_file=certs / "ca.pem") as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        info = pb_grpc.CandidateRankerStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.version
    with client_channel(address) as plain:  # no TLS: the handshake never completes
        assert _code(lambda: _health(plain)) == grpc.StatusCode.UNAVAILABLE
    with client_channel(address, ca_file=certs / "rogue-ca.pem") as wrong:  # untrusted server
        assert _code(lambda: _health(wrong)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_configured_ca(
    start_server: StartServer, registry_path: Path, certs: Path
) -> None:
    h = start_server(
        registry_dir=registry_path,
        tls_cert_file=certs / "server.pem",
        tls_key_file=certs / "server.key",
        tls_client_ca_file=certs / "ca.pem",
    )
    address = f"127.0.0.1:{h.port}"
    ca = certs / "ca.pem"
    with client_channel(
        address, ca_file=ca, cert_file=certs / "client.pem", key_file=certs / "client.key"
    ) as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
    with client_channel(address, ca_file=ca) as no_cert:
        assert _code(lambda: _health(no_cert)) == grpc.StatusCode.UNAVAILABLE
    with client_channel(
        address, ca_file=ca, cert_file=certs / "rogue.pem", key_file=certs / "rogue.key"
    ) as rogue:
        assert _code(lambda: _health(rogue)) == grpc.StatusCode.UNAVAILABLE


# -- bearer tokens, per RPC -------------------------------------------------------------------

# A request for each method: valid enough to reach the pipeline (its answer is irrelevant here).
REQUESTS: dict[str, Any] = {
    "GetCandidate": pb.GetCandidateRequest(id="C-none"),
    "ListPostings": pb.ListPostingsRequest(),
    "GetModelInfo": pb.GetModelInfoRequest(),
    "RankCandidates": pb.RankCandidatesRequest(posting_id="P-none"),
    "UpsertCandidates": pb.UpsertCandidatesRequest(
        candidates=[pb.Candidate(id="C-tok", cv_text="Welder with ten years of pipe work.")]
    ),
    "UpsertPostings": pb.UpsertPostingsRequest(
        postings=[pb.Posting(id="P-tok", title="Welder", description="Pipe welding.")]
    ),
    "RecordOutcomes": pb.RecordOutcomesRequest(
        outcomes=[pb.Outcome(posting_id="P-tok", candidate_id="C-tok", stage="applied")]
    ),
    "DeleteCandidates": pb.DeleteCandidatesRequest(ids=["C-none"]),
}


class Secured:
    """One server that requires tokens, and a secret per scope."""

    def __init__(self, handle: ServerHandle, secrets: dict[str, str]) -> None:
        self.handle = handle
        self.secrets = secrets
        self.address = f"127.0.0.1:{handle.port}"

    def call(self, method: str, token: str | None) -> grpc.StatusCode:
        with client_channel(self.address, token=token) as ch:
            stub = pb_grpc.CandidateRankerStub(ch)
            try:
                getattr(stub, method)(REQUESTS[method], timeout=30)
            except grpc.RpcError as e:
                return e.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
    encoder: TextEncoder,
    trained_registry: ModelRegistry,
) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    registry = root / "registry"
    shutil.copytree(trained_registry.root, registry, ignore=shutil.ignore_patterns(".lock"))
    settings = serving_settings(root / "data", registry)
    tokens = TokenFile(settings.resolved_tokens_file)
    secrets = {s.value: tokens.create(f"t-{s.value}", [s])[1] for s in Scope}
    handle = ServerHandle(settings, encoder)
    try:
        yield Secured(handle, secrets)
    finally:
        handle.stop()


@pytest.mark.parametrize("method", sorted(RPC_SCOPES))
def test_every_rpc_needs_a_token_with_its_scope(secured: Secured, method: str) -> None:
    needed = RPC_SCOPES[method].value
    assert secured.call(method, None) == grpc.StatusCode.UNAUTHENTICATED
    assert secured.call(method, "rnk_not-a-token") == grpc.StatusCode.UNAUTHENTICATED
    for scope, secret in secured.secrets.items():
        got = secured.call(method, secret)
        if scope in (needed, Scope.ADMIN.value):
            assert got not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), (scope, got)
        else:
            assert got == grpc.StatusCode.PERMISSION_DENIED, (scope, got)


def test_refusals_say_what_to_do_and_health_stays_open(secured: Secured) -> None:
    with client_channel(secured.address) as ch:
        stub = pb_grpc.CandidateRankerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert "authorization: Bearer" in e.value.details()  # type: ignore[attr-defined]
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        # Reflection lists what the service offers: it needs a token too.
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        assert _code(lambda: list(reflect.ServerReflectionInfo(iter([ask]), timeout=10))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    with client_channel(secured.address, token=secured.secrets["rank"]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.CandidateRankerStub(ch).DeleteCandidates(REQUESTS["DeleteCandidates"])
        details = e.value.details()  # type: ignore[attr-defined]
        assert "'t-rank'" in details and "erase" in details
        assert secured.secrets["rank"] not in details


def test_a_revoked_token_is_refused_from_the_next_call(secured: Secured) -> None:
    tokens = TokenFile(secured.handle.settings.resolved_tokens_file)
    _, secret = tokens.create("short-lived", [Scope.READ])
    assert secured.call("GetModelInfo", secret) == grpc.StatusCode.OK
    assert tokens.revoke("short-lived")
    assert secured.call("GetModelInfo", secret) == grpc.StatusCode.UNAUTHENTICATED


def test_an_erasure_records_the_token_name_never_the_secret(secured: Secured) -> None:
    writer, eraser = secured.secrets["write"], secured.secrets["erase"]
    with client_channel(secured.address, token=writer) as ch:
        r = pb_grpc.CandidateRankerStub(ch).UpsertCandidates(
            pb.UpsertCandidatesRequest(
                candidates=[pb.Candidate(id="C-gone", cv_text="Baker, sourdough and rye.")]
            ),
            timeout=60,
        )
        assert r.stored == 1
    with client_channel(secured.address, token=eraser) as ch:
        r2 = pb_grpc.CandidateRankerStub(ch).DeleteCandidates(
            pb.DeleteCandidatesRequest(ids=["C-gone"]), timeout=60
        )
        assert r2.receipt.candidates == 1
    actions = secured.handle.pipeline.store.admin_actions()
    erase = [a for a in actions if a["action"] == "erase"][-1]
    assert erase["actor"] == "token:t-erase"
    assert list(r2.receipt.receipt_ids) == erase["detail"]["receipt_ids"]  # type: ignore[index]
    assert eraser not in str(actions)


# -- the token file and the command ------------------------------------------------------------


def test_tokens_are_stored_hashed_in_an_owner_only_file(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "data" / "tokens.json")
    token, secret = tokens.create("ats", [Scope.WRITE, Scope.RANK])
    text = tokens.path.read_text()
    assert secret not in text and secret_digest(secret) in text
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.path.parent.stat().st_mode) == 0o700
    assert tokens.verify(secret) == token
    assert tokens.verify(secret + "x") is None
    assert token.allows(Scope.RANK) and not token.allows(Scope.ERASE)


def test_tokens_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    tokens_commands.register(app)
    env = {"RANKER_DATA_DIR": str(tmp_path / "data")}
    made = runner.invoke(app, ["tokens", "create", "ats", "--scope", "write,rank"], env=env)
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("rnk_")
    listed = runner.invoke(app, ["tokens", "list"], env=env)
    assert "ats" in listed.output and "rank,write" in listed.output
    assert secret not in listed.output
    bad = runner.invoke(app, ["tokens", "create", "x", "--scope", "root"], env=env)
    assert bad.exit_code == 1 and "unknown scope" in bad.output
    assert runner.invoke(app, ["tokens", "revoke", "ats"], env=env).exit_code == 0
    assert runner.invoke(app, ["tokens", "revoke", "ats"], env=env).exit_code == 1


# -- exposure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("", False), ("10.1.2.3", False), ("[::]", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) == loopback


def test_a_non_loopback_address_without_tls_and_tokens_is_refused_with_what_to_set(
    encoder: TextEncoder, tmp_path: Path, registry_path: Path, certs: Path
) -> None:
    plain = serving_settings(tmp_path / "data", registry_path, host="0.0.0.0")
    with pytest.raises(StartError) as e:
        ServerHandle(plain, encoder)
    for hint in ("RANKER_TLS_CERT_FILE", "ranker tokens create", "RANKER_ALLOW_INSECURE"):
        assert hint in str(e.value)
    # TLS alone is not enough; TLS and tokens are.
    tls = {"tls_cert_file": certs / "server.pem", "tls_key_file": certs / "server.key"}
    with pytest.raises(StartError, match="bearer tokens"):
        ServerHandle(
            serving_settings(tmp_path / "data", registry_path, host="0.0.0.0", **tls), encoder
        )
    settings = serving_settings(tmp_path / "data", registry_path, host="0.0.0.0", **tls)
    TokenFile(settings.resolved_tokens_file).create("admin", [Scope.ADMIN])
    policy = AccessPolicy.from_settings(settings)
    assert policy.required
    policy.check_exposure(settings)  # no error
    allowed = serving_settings(tmp_path / "d2", registry_path, host="0.0.0.0", allow_insecure=True)
    AccessPolicy.from_settings(allowed).check_exposure(allowed)  # explicitly allowed


def test_the_loopback_default_needs_no_token(served: ServerHandle) -> None:
    assert served.stub.GetModelInfo(pb.GetModelInfoRequest()).version


# -- the client commands -------------------------------------------------------------------------


def test_query_and_health_commands_pass_a_token_and_tls_settings(
    start_server: StartServer, registry_path: Path, certs: Path, tmp_path: Path
) -> None:
    import typer

    data = tmp_path / "data"
    settings = serving_settings(data, registry_path)
    _, secret = TokenFile(settings.resolved_tokens_file).create("recruiter", [Scope.RANK])
    h = start_server(
        data_dir=data,
        registry_dir=registry_path,
        tls_cert_file=certs / "server.pem",
        tls_key_file=certs / "server.key",
        tls_client_ca_file=certs / "ca.pem",
    )
    from ranker.commands import query as query_command

    app = typer.Typer()
    serving.register(app)
    query_command.register(app)
    address = ["--address", f"127.0.0.1:{h.port}"]
    mtls = ["--ca", str(certs / "ca.pem"), "--cert", str(certs / "client.pem")]
    mtls += ["--key", str(certs / "client.key")]
    ok = runner.invoke(app, ["health", *address, *mtls])
    assert ok.exit_code == 0 and "SERVING" in ok.output, ok.output
    no_tls = runner.invoke(app, ["health", *address, "--timeout", "3"])
    assert no_tls.exit_code == 1
    query = ["query", "--posting-id", "P-none", *address, *mtls]
    refused = runner.invoke(app, query)
    assert refused.exit_code == 1 and "UNAUTHENTICATED" in refused.output
    with_token = runner.invoke(app, [*query, "--token", secret])
    # Authenticated and authorised: the service itself answers (the posting does not exist).
    assert with_token.exit_code == 1 and "NOT_FOUND" in with_token.output, with_token.output
    from_env = runner.invoke(app, query, env={"RANKER_CLIENT_TOKEN": secret})
    assert "NOT_FOUND" in from_env.output
