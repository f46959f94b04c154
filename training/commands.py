"""Training commands: `ranker demo-data`, `ranker train`, `ranker evaluate` (an entry-point plugin)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError
from training.audit_commands import audit

if TYPE_CHECKING:  # imported lazily below: `ranker --help` should not load LightGBM and ONNX
    from ranker.registry import ModelRegistry
    from training.gates import GatePolicy

console = Console()


VIEW_TITLES = {"applicants": "Applicant view", "pool": "Pool view (as served)"}


def evaluation_tables(ev: Mapping[str, Any]) -> list[Table]:
    """Rich tables of an evaluation (`training.evaluate.Evaluation.as_dict`): per view, every
    ranker's metrics as mean [95% CI] with the postings each metric is defined on (n), then the
    primary ranker's paired differences with every other ranker on the headline metrics."""
    from training.card import estimate_text, view_notes
    from training.evaluate import HEADLINE, VIEWS

    tables: list[Table] = []
    for name in VIEWS:
        view = ev["views"][name]
        metrics = view["metrics"]
        if not metrics:
            continue
        names = list(next(iter(metrics.values())))
        first = next(iter(metrics.values()))
        values = Table(
            title=f"{VIEW_TITLES[name]}: {view['description']}",
            caption="; ".join(view_notes(view)),
            caption_justify="left",
        )
        values.add_column("ranker")
        for m in names:
            values.add_column(f"{m}\nn={first[m]['n']}", justify="right")
        for ranker, per in metrics.items():
            values.add_row(ranker, *(estimate_text(per[m]).replace(" [", "\n[") for m in names))
        tables.append(values)
        diffs = Table(
            title=f"{VIEW_TITLES[name]}: paired differences, {ev['primary']} minus each other "
            "ranker on the same postings",
            caption="no significant difference = the 95% interval includes 0; every metric's "
            "difference is in the stored JSON",
            caption_justify="left",
        )
        for col, justify in (
            ("comparison", "left"),
            ("metric", "left"),
            ("difference [95% CI]", "right"),
            ("n", "right"),
            ("verdict", "left"),
        ):
            diffs.add_column(col, justify=justify)  # type: ignore[arg-type]
        headline = [m for m in HEADLINE[name] if m in names]
        for pair, per in view["differences"].items():
            for i, m in enumerate(headline):
                d = per[m]
                style = {"higher": "green", "lower": "red"}.get(d["verdict"], "dim")
                diffs.add_row(
                    pair if i == 0 else "",
                    m,
                    estimate_text(d, signed=True),
                    str(d["n"]),
                    f"[{style}]{d['verdict']}[/{style}]",
                    end_section=i == len(headline) - 1,
                )
        tables.append(diffs)
    return tables


def print_evaluation(ev: Mapping[str, Any]) -> None:
    """Both views' tables, then the rules they follow (relevance, intervals, ties, unlabelled)."""
    for table in evaluation_tables(ev):
        console.print(table)
    console.print(
        f"Relevant = label >= {ev['relevant_at_or_above']} (interviewed or beyond). "
        f"{ev['intervals']} {ev['ties']} {ev['unlabelled']}",
        highlight=False,
    )


def demo_data(
    out: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: <data_dir>/demo).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 7,
    candidates: Annotated[int, typer.Option(min=10, help="Number of candidates.")] = 2000,
    postings: Annotated[int, typer.Option(min=6, help="Number of postings.")] = 1000,
    bias: Annotated[
        str | None,
        typer.Option(
            help="Make the historical hiring process biased against ATTRIBUTE=CATEGORY (e.g. "
            "sex=female, age_band=45-59) through --bias-proxy; default: unbiased.",
        ),
    ] = None,
    bias_proxy: Annotated[
        str,
        typer.Option(
            help="CV trait the biased process penalises: career_break, part_time or "
            "graduation_year (a degree from 2003 or earlier).",
        ),
    ] = "career_break",
    bias_strength: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Screening and interview pass probabilities of proxy holders are each "
            "multiplied by 1 - strength.",
        ),
    ] = 0.5,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when the files already exist.")
    ] = False,
) -> None:
    """Generate the demo ATS export: candidates, postings, outcomes and protected.jsonl."""
    from training.demo import Bias, DemoConfig, demo_present, generate, write_demo

    out_dir = out if out is not None else Settings().resolved_demo_dir
    if if_missing and demo_present(out_dir):
        console.print(f"demo data already in {out_dir}; skipping")
        return
    started = time.perf_counter()
    try:
        scenario = Bias.parse(bias, bias_proxy, bias_strength) if bias is not None else None
        data = generate(
            DemoConfig(candidates=candidates, postings=postings, seed=seed, bias=scenario)
        )
    except RankerError as e:
        fail(str(e))
    write_demo(data, out_dir)
    console.print(
        f"wrote {len(data.candidates)} candidates, {len(data.postings)} postings, "
        f"{len(data.outcomes)} outcome events and protected.jsonl to {out_dir} "
        f"in {time.perf_counter() - started:.1f}s"
        + (f"; historical process biased against {scenario.describe()}" if scenario else "")
    )


class StoredData(NamedTuple):
    """What training and evaluation read from the store."""

    candidates: list[Any]
    """`CandidateRow`s: the current records."""
    postings: list[Any]
    outcomes: list[Any]
    protected: dict[str, dict[str, str]]
    versions: list[Any]
    """`CandidateVersion`s: earlier records, for point-in-time training rows."""


def _load_store(settings: Settings) -> StoredData:
    from ranker.datafiles import PROTECTED_NAMES
    from ranker.store_api import describe_store, open_store, store_exists

    try:
        if not store_exists(settings):
            fail(f"no store at {describe_store(settings)}; load data first: `ranker ingest`")
        store = open_store(settings)
    except RankerError as e:  # e.g. a store of another schema: the message says what to do
        fail(str(e))
    try:
        candidates = list(store.iter_candidates())
        postings = store.list_postings()
        outcomes = store.list_outcomes()
        versions = store.candidate_versions()
        protected: dict[str, dict[str, str]] = {}
        for name in sorted(PROTECTED_NAMES):
            for cid, value in store.protected_attributes(name).items():
                protected.setdefault(cid, {})[name] = value
    finally:
        store.close()
    if not candidates or not postings or not outcomes:
        fail(
            f"the store holds {len(candidates)} candidates, {len(postings)} postings and "
            f"{len(outcomes)} outcomes; training needs all three: `ranker ingest`"
        )
    return StoredData(candidates, postings, outcomes, protected, versions)


def _trained_on(registry: ModelRegistry, digest: str, mitigation: str = "none") -> str | None:
    """The newest registered version trained on data with `digest` by this code's features
    (and the same training-time mitigation)."""
    from ranker.features import FEATURE_NAMES, FEATURES_VERSION

    for version in reversed(registry.versions()):
        try:
            card = registry.card(version)
        except (RankerError, ValueError):
            continue  # an unreadable card cannot vouch for anything
        if (
            card.get("data", {}).get("sha256") == digest
            and card.get("feature_names") == list(FEATURE_NAMES)
            and card.get("features_version") == FEATURES_VERSION
            and card.get("mitigation", {}).get("method", "none") == mitigation
        ):
            return str(version)
    return None


MinPostingsOption = Annotated[
    int | None,
    typer.Option(min=1, help="Gate: held-out postings needed (default RANKER_GATE_MIN_POSTINGS)."),
]
VsServiceOption = Annotated[
    str | None,
    typer.Option(
        help="Gate against the version in service: not_worse or beats (default "
        "RANKER_GATE_VS_SERVICE)."
    ),
]
ImpactFloorOption = Annotated[
    float | None,
    typer.Option(min=0.01, max=1.0, help="Gate: impact ratio floor (default 0.8)."),
]
ImpactMarginOption = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Gate: largest impact ratio drop vs in service."),
]


def _gate_policy(
    settings: Settings,
    min_postings: int | None,
    vs_service: str | None,
    impact_floor: float | None,
    impact_margin: float | None,
) -> GatePolicy:
    """`Settings.gate_*`, overridden by the command's flags."""
    from training.gates import GatePolicy

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("gate_min_postings", min_postings),
            ("gate_vs_service", vs_service),
            ("gate_impact_floor", impact_floor),
            ("gate_impact_margin", impact_margin),
        )
        if value is not None
    }
    if vs_service is not None and vs_service not in ("not_worse", "beats"):
        fail(f"--vs-service must be not_worse or beats, got {vs_service!r}")
    return GatePolicy.from_settings(settings.model_copy(update=overrides))


def _dask_fitter(address: str | None, stack: contextlib.ExitStack) -> Any:
    """None (fit here), or a `training.dask_train.DaskFitter` on the cluster at `address`."""
    if not address:
        return None
    from ranker.dask_cluster import dask_client
    from training.dask_train import DaskFitter

    client = stack.enter_context(dask_client(address))
    console.print(f"fitting on Dask: {client.scheduler.address}, {len(client.nthreads())} workers")
    return DaskFitter(client)


def train(
    seed: Annotated[int, typer.Option(help="LightGBM seed.")] = 7,
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--no-promote",
            help="Put the new version in service (default: only if none is in service).",
        ),
    ] = None,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Skip when a registered version was already trained on exactly the stored data "
            "(promoting it instead if nothing is in service).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gates fail (needs --reason).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option(help="Why (recorded in the registry history).")
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="Who (default: RANKER_ACTOR, else the OS user).")
    ] = None,
    min_postings: MinPostingsOption = None,
    vs_service: VsServiceOption = None,
    impact_floor: ImpactFloorOption = None,
    impact_margin: ImpactMarginOption = None,
    mitigation: Annotated[
        str,
        typer.Option(
            help="Training-time bias mitigation: none, or reweigh (training rows weighted by "
            "category x label, Kamiran & Calders; recorded in the model card).",
        ),
    ] = "none",
    mitigation_attribute: Annotated[
        str, typer.Option(help="Protected attribute --mitigation reweighs by.")
    ] = "sex",
    dask: Annotated[
        str | None,
        typer.Option(
            help="Fit on a Dask cluster (lightgbm.dask): a scheduler address (tcp://host:8786) "
            "or local:N worker processes; default RANKER_DASK, else here.",
        ),
    ] = None,
) -> None:
    """Train a ranker on the store's outcomes, evaluate it, check the promotion gates, register
    it, and promote it when asked (or nothing is in service) and the gates pass."""
    from ranker.commands.models import gate_table, in_service_name
    from ranker.registry import ModelRegistry, resolve_actor
    from training.evaluate import data_digest
    from training.mitigation import MitigationConfig
    from training.train import TrainConfig, train_and_register

    try:
        mitigate = MitigationConfig(mitigation, mitigation_attribute)  # type: ignore[arg-type]
    except RankerError as e:
        fail(str(e))

    settings = Settings()
    if force and not (reason and reason.strip()):
        fail("--force needs --reason TEXT: the history records why the gates were overridden")
    policy = _gate_policy(settings, min_postings, vs_service, impact_floor, impact_margin)
    who = resolve_actor(actor, settings.actor)
    registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
    candidates, postings, outcomes, protected, versions = _load_store(settings)
    current = registry.current_version()
    if current is not None and promote is None:
        try:
            registry.load(current).check()
        except RankerError as e:
            # The version in service cannot be served by this code (e.g. trained on an older
            # feature version): the service would refuse to start, so the new one replaces it.
            console.print(f"{current} in service is no longer servable ({e}); replacing it")
            promote = True
    if if_missing:
        # Any version counts, promoted or not: otherwise every run while a model is in service
        # would register yet another copy of the same model.
        done = _trained_on(registry, data_digest(candidates, postings, outcomes), mitigate.method)
        if done is not None and done == current:
            console.print(f"model {current} in service was trained on this data; skipping")
            return
        if done is not None and (promote or (promote is None and current is None)):
            try:
                verdict = registry.gate_verdict(done, in_service_name(registry, settings))
                if verdict.report is not None:
                    console.print(gate_table(verdict.report))
                if not verdict.ok and not force:
                    console.print(
                        f"{done} was trained on this data; not promoted: {verdict.problem}"
                    )
                    return
                registry.promote(
                    done,
                    actor=who,
                    reason=reason or "passed the promotion gates",
                    forced=not verdict.ok,
                    gates="passed" if verdict.ok else "failed",
                )
            except RankerError as e:
                fail(str(e))
            console.print(f"{done} was trained on this data; promoted it (was {current or 'none'})")
            return
        if done is not None:
            console.print(
                f"{done} was trained on this data and is waiting for promotion (in service: "
                f"{current}); skipping. Promote it: `ranker models promote {done}`"
            )
            return
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            fit = _dask_fitter(dask or settings.dask, stack)
            result = train_and_register(
                candidates,
                postings,
                outcomes,
                registry,
                config=TrainConfig(seed=seed),
                promote=promote,
                protected=protected or None,
                settings=settings,
                versions=versions,
                gate_policy=policy,
                force_reason=reason if force else None,
                actor=who,
                mitigation=mitigate,
                fit=fit,
            )
    except RankerError as e:
        fail(str(e))
    card = result.card
    print_evaluation(card["evaluation"])
    if result.gates is not None:
        console.print(gate_table(result.gates))
    split = card["data"]["split"]
    console.print(
        f"trained {result.version} in {time.perf_counter() - started:.1f}s: "
        f"{card['model']['best_iteration']} trees, "
        f"{split['postings']['train']}/{split['postings']['valid']}/{split['postings']['test']} "
        f"train/valid/test postings, ONNX parity {card['parity']['max_abs_diff']:.1e}"
    )
    where = registry.version_dir(str(result.version))
    gates_passed = result.gates is not None and result.gates.get("passed")
    if result.promoted:
        how = "" if gates_passed else f" [yellow]overriding the gates (--force: {reason})[/yellow]"
        console.print(f"promoted {result.version} ({where}){how}; a running service picks it up")
    elif not gates_passed and (promote or (promote is None and current is None)):
        failed = [g["gate"] for g in (result.gates or {}).get("gates", []) if not g["passed"]]
        console.print(
            f"registered {result.version} ({where}), [red]not promoted[/red]: it failed the "
            f"promotion gate(s) {', '.join(failed)} (table above); in service: "
            f"{in_service_name(registry, settings) or 'nothing'}. Override only with "
            f"`ranker models promote {result.version} --force --reason TEXT`"
        )
    else:
        console.print(
            f"registered {result.version} ({where}), not promoted; "
            f"in service: {registry.current_version()}. Promote: "
            f"`ranker models promote {result.version}`"
        )


def evaluate(
    version: Annotated[
        str | None, typer.Argument(help="Version to evaluate (default: the one in service).")
    ] = None,
) -> None:
    """Evaluate a version against the model in service and baselines; store the result.

    Two views of the postings neither version has seen (created from the later of their
    test-split starts on): each posting's applicants, and the served pool (retrieve from every
    stored candidate, rerank). Every metric with a 95% bootstrap interval over postings; every
    comparison a paired difference. Stored in the version's `evaluations/<UTC time>.json`.
    """
    from ranker.registry import ModelRegistry
    from training.evaluate import compare_versions, data_digest

    settings = Settings()
    registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
    candidates, postings, outcomes, _, _ = _load_store(settings)
    try:
        bundles = [registry.load(version)]
        bundles[0].check()
        current = registry.current_version()
        if current is not None and current != bundles[0].version:
            bundles.append(registry.load(current))
        comparison = compare_versions(bundles, candidates, postings, outcomes, settings)
        record = comparison.record(
            [b.version for b in bundles], data_digest(candidates, postings, outcomes)
        )
        path = registry.record_evaluation(bundles[0].version, record)
    except RankerError as e:
        fail(str(e))
    console.print(
        f"{len(comparison.evaluation.posting_ids)} postings with outcomes created since "
        f"{comparison.held_out_from:%Y-%m-%d %H:%M} (held out from every version compared)"
    )
    for left, why in comparison.left_out.items():
        console.print(f"{left} not compared: {why}")
    print_evaluation(record)
    console.print(f"stored in {path}")


def gates(
    version: Annotated[str, typer.Argument(help="Version whose gates to check.")],
    min_postings: MinPostingsOption = None,
    vs_service: VsServiceOption = None,
    impact_floor: ImpactFloorOption = None,
    impact_margin: ImpactMarginOption = None,
) -> None:
    """Check a version's promotion gates against what is in service now; store gates.json.

    Exits 2 when a gate fails. Use it when the version in service changed since the version was
    trained (`ranker models promote` then refuses its stale gate results).
    """
    from ranker.commands.models import gate_table
    from ranker.registry import ModelRegistry
    from training.dataset import prepare_all
    from training.evaluate import compare_versions
    from training.gates import check_gates, in_service_of

    settings = Settings()
    policy = _gate_policy(settings, min_postings, vs_service, impact_floor, impact_margin)
    registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
    candidates, postings, outcomes, protected, _ = _load_store(settings)
    try:
        bundle = registry.load(version)
        bundle.check()
        current = registry.current_version()
        if current == version:
            fail(f"{version} is in service; gates compare a version with the one in service")
        in_service = registry.load(current) if current is not None else None
        comparison = compare_versions(
            [bundle] if in_service is None else [bundle, in_service],
            candidates,
            postings,
            outcomes,
            settings,
        )
        prepared_c, prepared_p = prepare_all(candidates, postings)
        report = check_gates(
            evaluation=comparison.evaluation,
            parity_diff=float(bundle.card.get("parity", {}).get("max_abs_diff", 0.0)),
            model=bundle,
            in_service=in_service_of(
                comparison.evaluation,
                in_service,
                None if current is None else comparison.left_out.get(current),
                settings.fallback,
            ),
            candidates=prepared_c,
            postings=prepared_p,
            protected=protected or None,
            settings=settings,
            policy=policy,
        ).as_dict()
        report["version"] = version
        path = registry.record_gates(version, report)
    except RankerError as e:
        fail(str(e))
    console.print(gate_table(report))
    console.print(f"stored in {path}")
    if not report["passed"]:
        raise typer.Exit(code=2)


def register(app: typer.Typer) -> None:
    """Add the training commands to the `ranker` CLI (and `ranker models compare`)."""
    from ranker.commands.models import models_app
    from training.shadow_commands import compare

    app.command("demo-data")(demo_data)
    app.command()(train)
    app.command()(evaluate)
    app.command()(gates)
    app.command()(audit)
    models_app.command()(compare)
