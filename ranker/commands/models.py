"""Model registry commands: `ranker models list | show | promote | rollback | alias | unalias`.

`promote` applies the promotion gates stored with each version (`gates.json`, written by
`ranker train` and `ranker gates`), records who promoted and why, and waits until the running
service confirms it serves the new version. `list` shows the registry's aliases beside what the
service actually serves. Training adds `ranker models compare` (shadow scoring) as a plugin.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError

if TYPE_CHECKING:
    from ranker.registry import ModelRegistry
    from ranker.v1 import ranker_pb2 as pb

console = Console()

models_app = typer.Typer(
    name="models",
    help="List, inspect, promote, roll back and alias model versions.",
    no_args_is_help=True,
)

SERVER_TIMEOUT = 2.0
"""Seconds `models list` waits for the service's GetModelInfo before saying none answered."""

ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="host:port of the running service (default: settings)."),
]
ActorOption = Annotated[
    str | None,
    typer.Option(help="Who makes the change (default: RANKER_ACTOR, else the OS user)."),
]
ReasonOption = Annotated[str | None, typer.Option(help="Why; recorded in the history.")]


def _registry(settings: Settings) -> ModelRegistry:
    from ranker.registry import ModelRegistry

    return ModelRegistry(settings.resolved_registry_dir, settings.ort_session)


def _address(settings: Settings, server: str | None) -> str:
    if server:
        return server
    # A service bound to every interface answers on the loopback one.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"{host}:{settings.port}"


def fallback_version(settings: Settings) -> str | None:
    """The fallback's version name, or None when the fallback is off."""
    # Imported here: ranker.fallback loads LightGBM (through its reasons), which every other
    # command (`ranker health`, `ranker query`) would otherwise wait for at start.
    from ranker.fallback import FALLBACK_VERSIONS

    return FALLBACK_VERSIONS.get(settings.fallback)


def in_service_name(registry: ModelRegistry, settings: Settings) -> str | None:
    """What serves now by the registry: the champion, else the fallback, else None."""
    return registry.current_version() or fallback_version(settings)


def _metric(card: dict[str, Any], ranker: str, name: str) -> str:
    value = card.get("metrics", {}).get("test", {}).get(ranker, {}).get(name)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def gate_table(report: Mapping[str, Any]) -> Table:
    """A version's promotion gate results (`gates.json`): gate, required, measured, result."""
    table = Table(
        title=f"promotion gates of {report.get('version', '?')} against "
        f"{report.get('in_service') or 'nothing'} in service",
        caption=report.get("rule_note", ""),
        caption_justify="left",
    )
    for col, justify in (
        ("gate", "left"),
        ("required", "left"),
        ("measured", "left"),
        ("result", "left"),
        ("detail", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for g in report.get("gates", []):
        result = "[green]pass[/green]" if g.get("passed") else "[red]FAIL[/red]"
        table.add_row(
            str(g.get("gate")),
            str(g.get("required")),
            str(g.get("measured")),
            result,
            str(g.get("detail", "")),
        )
    return table


# -- the running service --------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceView:
    """What the running service said, or why it said nothing."""

    address: str
    info: pb.GetModelInfoResponse | None
    error: str | None


def ask_service(address: str, timeout: float = SERVER_TIMEOUT) -> ServiceView:
    """GetModelInfo from the service at `address`, waiting at most `timeout` seconds."""
    import grpc

    from ranker.v1 import ranker_pb2 as pb
    from ranker.v1 import ranker_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            info = pb_grpc.CandidateRankerStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=timeout
            )
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            details = e.details()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
                code == grpc.StatusCode.DEADLINE_EXCEEDED or "connect" in (details or "").lower()
            ):
                return ServiceView(address, None, f"no service answers at {address}")
            return ServiceView(address, None, f"{code.name}: {details}")
    return ServiceView(address, info, None)


def _service_lines(view: ServiceView, expected: str | None, poll: float) -> list[str]:
    """What the service serves and, when it is not the registry's choice, why."""
    if view.info is None:
        return [f"service: {view.error}; cannot tell what it serves"]
    info = view.info
    what = f"{info.version} (fallback ranker: no trained version promoted)" if info.fallback else ""
    lines = [f"service at {view.address} serves {what or info.version}"]
    if expected is not None and info.version != expected:
        why = (
            f"it refused {info.refused_version}: {info.refused_error}"
            if info.refused_version == expected
            else f"it has not loaded it yet (it checks the registry every {poll:g} s), or it "
            "reads another registry folder"
        )
        lines.append(f"[yellow]differs from the registry's {expected}[/yellow]: {why}")
    elif info.refused_version:
        lines.append(f"it refused {info.refused_version}: {info.refused_error}")
    if info.challenger_version:
        lines.append(
            f"shadow: challenger {info.challenger_version} scored {info.shadow_scored} "
            f"rankings, dropped {info.shadow_dropped} (queue full)"
        )
    if info.refused_challenger:
        lines.append(
            f"[yellow]it refused the challenger {info.refused_challenger}[/yellow]: "
            f"{info.refused_challenger_error}"
        )
    return lines


def wait_for_service(address: str, version: str, seconds: float) -> None:
    """Poll the service until it serves `version`; exit 1 when it refuses it or time runs out.

    No service answering is not a failure of the promotion: the pointer moved, and a service
    started later serves the version.
    """
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    last: ServiceView | None = None
    while True:
        view = ask_service(address, timeout=min(SERVER_TIMEOUT, max(0.1, seconds)))
        if view.info is None and last is None:
            console.print(
                f"{view.error}; the registry is updated, a service started later serves {version}"
            )
            return
        if view.info is not None:
            last = view
            if view.info.version == version:
                console.print(
                    f"confirmed: the service at {address} serves {version} "
                    f"({time.monotonic() - started:.1f} s)"
                )
                return
            if view.info.refused_version == version:
                fail(
                    f"the service at {address} refused {version} and keeps serving "
                    f"{view.info.version}: {view.info.refused_error}. Roll back the pointer: "
                    "`ranker models rollback`"
                )
        if time.monotonic() >= deadline:
            served = last.info.version if last is not None and last.info is not None else "?"
            fail(
                f"not confirmed: after {seconds:g} s the service at {address} still serves "
                f"{served}; check `ranker models list` (it polls the registry every "
                "RANKER_MODEL_POLL_SECONDS)"
            )
        time.sleep(0.2)


# -- commands -------------------------------------------------------------------------------


@models_app.command("list")
def list_versions(
    server: ServerOption = None,
    no_server: Annotated[
        bool, typer.Option("--no-server", help="Do not ask the running service.")
    ] = False,
    events: Annotated[int, typer.Option(min=0, help="History entries to show.")] = 8,
) -> None:
    """Every version with its aliases, test metrics and gates; the history; what is served."""
    from ranker.registry import CHAMPION

    settings = Settings()
    registry = _registry(settings)
    versions = registry.versions()
    try:
        aliases = registry.aliases()
        history = registry.events()
    except RankerError as e:
        fail(str(e))
    current = aliases.get(CHAMPION)
    if not versions:
        console.print(f"no model versions in {registry.root}; train one: `ranker train`")
    else:
        by_version: dict[str, list[str]] = {}
        for name, v in aliases.items():
            by_version.setdefault(v, []).append(name)
        table = Table(title=f"model registry {registry.root} (metrics: held-out test postings)")
        for col, justify in (
            ("aliases", "left"),
            ("version", "left"),
            ("created", "left"),
            ("trees", "right"),
            ("NDCG@10", "right"),
            ("dense NDCG@10", "right"),
            ("MRR", "right"),
            ("gates", "left"),
            ("data", "left"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for v in versions:
            names = ", ".join(sorted(by_version.get(v, []), key=lambda n: n != CHAMPION))
            try:
                card = registry.card(v)
                gates = registry.gates(v)
            except (RankerError, ValueError) as err:
                table.add_row(names, v, f"[red]unreadable: {err}[/red]", "", "", "", "", "", "")
                continue
            gate_text = "-"
            if gates is not None:
                gate_text = "passed" if gates.get("passed") else "[red]failed[/red]"
                gate_text += f" vs {gates.get('in_service') or 'nothing'}"
            table.add_row(
                f"[green]{names}[/green]" if v == current else names,
                v,
                str(card.get("created_at", "-"))[:16].replace("T", " "),
                str(card.get("model", {}).get("best_iteration", "-")),
                _metric(card, "model", "ndcg@10"),
                _metric(card, "dense_cosine", "ndcg@10"),
                _metric(card, "model", "mrr"),
                gate_text,
                str(card.get("data", {}).get("sha256", "-"))[:8],
            )
        console.print(table)
    fallback = fallback_version(settings)
    console.print(
        f"in service: {current}"
        if current
        else "in service: none promoted; the service ranks with "
        + (f"the fallback {fallback}" if fallback else "nothing (RANKER_FALLBACK=none)")
    )
    for name, v in sorted(aliases.items()):
        if name != CHAMPION:
            console.print(f"{name}: {v}")
    if history and events:
        log = Table(title="history (newest last)")
        for col in ("at", "action", "version", "actor", "reason"):
            log.add_column(col)
        for ev in history[-events:]:
            action = str(ev.get("action", ""))
            if ev.get("alias"):
                action += f" {ev['alias']}"
            if ev.get("forced"):
                action += " [red](forced)[/red]"
            log.add_row(
                str(ev.get("at", ""))[:19].replace("T", " "),
                action,
                str(ev.get("version") or ""),
                str(ev.get("actor") or "-"),
                str(ev.get("reason") or ""),
            )
        console.print(log)
    if not no_server:
        view = ask_service(_address(settings, server))
        for line in _service_lines(view, current or fallback, settings.model_poll_seconds):
            console.print(line)


@models_app.command()
def show(
    version: Annotated[str, typer.Argument(help="Version, e.g. v0001.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print model_card.json instead.")] = False,
) -> None:
    """Print a version's model card."""
    from ranker.registry import CARD_MD_FILE

    registry = _registry(Settings())
    try:
        folder = registry.version_dir(version)
        card = registry.card(version)
    except RankerError as e:
        fail(str(e))
    if as_json:
        console.print_json(json.dumps(card))
        return
    from rich.markdown import Markdown

    md = folder / CARD_MD_FILE
    console.print(Markdown(md.read_text(encoding="utf-8")) if md.is_file() else card)


WaitOption = Annotated[
    float, typer.Option(min=0, help="Seconds to wait for the service to confirm.")
]
NoWaitOption = Annotated[bool, typer.Option("--no-wait", help="Do not wait for the service.")]


@models_app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to put in service.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote although the gates fail (needs --reason).")
    ] = False,
    reason: ReasonOption = None,
    actor: ActorOption = None,
    wait: WaitOption = 30.0,
    no_wait: NoWaitOption = False,
    server: ServerOption = None,
) -> None:
    """Check a version's promotion gates, put it in service, and wait for the service to swap."""
    from ranker.registry import resolve_actor

    settings = Settings()
    registry = _registry(settings)
    if force and not (reason and reason.strip()):
        fail("--force needs --reason TEXT: the history records why the gates were overridden")
    try:
        before = registry.current_version()
        registry.version_dir(version)
        if before == version:
            console.print(f"{version} is already in service")
            return
        verdict = registry.gate_verdict(version, in_service_name(registry, settings))
    except RankerError as e:
        fail(str(e))
    if verdict.report is not None:
        console.print(gate_table(verdict.report))
    if not verdict.ok:
        if not force:
            fail(f"not promoted: {verdict.problem}")
        console.print(f"[yellow]overriding the gates (--force)[/yellow]: {verdict.problem}")
    gates = (
        "passed"
        if verdict.ok
        else "not checked"
        if verdict.report is None
        else "failed"
        if not verdict.report.get("passed")
        else f"stale (measured against {verdict.report.get('in_service')})"
    )
    try:
        registry.promote(
            version,
            actor=resolve_actor(actor, settings.actor),
            reason=reason or "passed the promotion gates",
            forced=not verdict.ok,
            gates=gates,
        )
    except RankerError as e:
        fail(str(e))
    console.print(f"in service: {version} (was {before or 'none'}); gates {gates}")
    if not no_wait:
        wait_for_service(_address(settings, server), version, wait)


@models_app.command()
def rollback(
    reason: ReasonOption = None,
    actor: ActorOption = None,
    wait: WaitOption = 30.0,
    no_wait: NoWaitOption = False,
    server: ServerOption = None,
) -> None:
    """Put the previously promoted version back in service (no gates: it served before)."""
    from ranker.registry import resolve_actor

    settings = Settings()
    registry = _registry(settings)
    before = registry.current_version()
    try:
        version = registry.rollback(
            actor=resolve_actor(actor, settings.actor), reason=reason or "rollback"
        )
    except RankerError as e:
        fail(str(e))
    console.print(f"rolled back: in service {version} (was {before})")
    if not no_wait:
        wait_for_service(_address(settings, server), version, wait)


@models_app.command()
def alias(
    name: Annotated[str, typer.Argument(help="Alias, e.g. challenger.")],
    version: Annotated[str, typer.Argument(help="Version it names.")],
    reason: ReasonOption = None,
    actor: ActorOption = None,
) -> None:
    """Point an alias at a version; `challenger` is scored in shadow by the running service."""
    from ranker.registry import resolve_actor

    settings = Settings()
    try:
        _registry(settings).set_alias(
            name, version, actor=resolve_actor(actor, settings.actor), reason=reason
        )
    except RankerError as e:
        fail(str(e))
    note = "; the service scores it in shadow (`ranker models compare`)"
    console.print(f"{name}: {version}{note if name == 'challenger' else ''}")


@models_app.command()
def unalias(
    name: Annotated[str, typer.Argument(help="Alias to remove, e.g. challenger.")],
    reason: ReasonOption = None,
    actor: ActorOption = None,
) -> None:
    """Remove an alias (removing `challenger` stops shadow scoring)."""
    from ranker.registry import resolve_actor

    settings = Settings()
    try:
        version = _registry(settings).clear_alias(
            name, actor=resolve_actor(actor, settings.actor), reason=reason
        )
    except RankerError as e:
        fail(str(e))
    console.print(f"removed {name} (was {version})")


def register(app: typer.Typer) -> None:
    """Add `ranker models ...` to the CLI."""
    app.add_typer(models_app, name="models")
