"""The model slot: which model version is in service, how a new one is checked and swapped in.

It follows the registry's pointer (the `champion`, what is served) and its `challenger` alias
(scored in shadow, `ranker.shadow`). Before any version is promoted it serves the fallback ranker
(`ranker.fallback`, `Settings.fallback`), and the first promoted version replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ranker.api import ModelInfo
from ranker.errors import ModelRejected, NotReady
from ranker.explain import ContributionExplainer, TreeExplainer
from ranker.fallback import FallbackExplainer, fallback_bundle
from ranker.features import FeatureBuilder
from ranker.metrics import ServiceMetrics

if TYPE_CHECKING:
    from ranker.registry import ModelRegistry

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
"""The registry alias whose version the service scores in shadow."""


class RowScorer(Protocol):
    """Scores feature rows (`OnnxScorer`, or a fallback rule)."""

    def score(self, x: np.ndarray) -> np.ndarray: ...


class Servable(Protocol):
    """What the pipeline ranks with: a `ModelBundle` or a `FallbackBundle`."""

    @property
    def version(self) -> str: ...
    @property
    def feature_names(self) -> tuple[str, ...]: ...
    @property
    def card(self) -> Mapping[str, Any]: ...
    @property
    def scorer(self) -> RowScorer: ...
    @property
    def builder(self) -> FeatureBuilder: ...


Explainer = ContributionExplainer
"""Explains ranked candidates: `TreeExplainer` for a trained version, the fallback's own."""


@dataclass(frozen=True)
class ServedModel:
    """A model bundle in service with what the pipeline derives from it."""

    bundle: Servable
    explainer: Explainer
    loaded_at: datetime
    fallback: bool = False
    """True for the fallback ranker (no trained version promoted)."""


@dataclass(frozen=True)
class Refusal:
    """A version the registry points to that the service refused, and why."""

    version: str
    error: str


class ModelSlot:
    """Holds the model in service (and the challenger) and follows the registry's pointers.

    A request takes `served` once and finishes on that model even if a new one is swapped in
    meanwhile (the swap is one reference assignment). Thread-safe for that reason; `serve` and
    `refresh` are called from one thread at a time (start-up, then the upkeep thread).
    """

    def __init__(
        self,
        registry: ModelRegistry | None,
        metrics: ServiceMetrics | None,
        fallback: str = "none",
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.fallback = fallback
        self._served: ServedModel | None = None
        self._challenger: ServedModel | None = None
        # The versions last refused: not retried until the pointer moves elsewhere and back.
        self._refused: Refusal | None = None
        self._refused_challenger: Refusal | None = None

    @property
    def served(self) -> ServedModel | None:
        return self._served

    @property
    def challenger(self) -> ServedModel | None:
        """The challenger scored in shadow, or None."""
        return self._challenger

    @property
    def version(self) -> str | None:
        served = self._served
        return None if served is None else served.bundle.version

    @property
    def refused(self) -> Refusal | None:
        """The champion version refused last (still pointed to), or None."""
        return self._refused

    @property
    def is_fallback(self) -> bool:
        served = self._served
        return served is not None and served.fallback

    def require(self) -> ServedModel:
        """The model in service; NotReady when there is none yet."""
        served = self._served
        if served is None:
            raise NotReady(
                "no model is in service yet and the fallback ranker is off (RANKER_FALLBACK="
                "none); train and promote one (`ranker train`) and retry"
            )
        return served

    def serve_promoted(self) -> None:
        """Serve the registry's promoted version, else the fallback (start-up); raises
        ModelRejected when the promoted version fails its checks."""
        if self.registry is not None:
            version = self.registry.current_version()
            if version is not None:
                self.serve(version)
                self._refresh_challenger()
                return
        if self.fallback != "none":
            self.serve_fallback()
            self._refresh_challenger()
        elif self.registry is not None:
            log.warning(
                "no model version is promoted in %s and the fallback is off; ranking is "
                "unavailable until one is (`ranker train`, or promote a version)",
                self.registry.root,
            )

    def serve_fallback(self) -> None:
        """Serve the fallback ranker named by `fallback` (nothing trained is promoted)."""
        bundle = fallback_bundle(self.fallback)
        served = ServedModel(
            bundle=bundle,
            explainer=FallbackExplainer(bundle.rule),
            loaded_at=datetime.now(UTC),
            fallback=True,
        )
        self._served = served
        log.warning(
            "no model version is promoted: serving the fallback ranker %s until one passes the "
            "gates and is promoted (`ranker train`)",
            bundle.version,
        )
        if self.metrics is not None:
            self.metrics.set_model(bundle.version, served.loaded_at.timestamp())

    def _load(self, version: str) -> ServedModel:
        if self.registry is None:
            raise ModelRejected(f"there is no model registry to load version {version!r} from")
        try:
            bundle = self.registry.load(version)
            bundle.check()
        except ModelRejected:
            raise
        except Exception as e:
            raise ModelRejected(
                f"model version {version!r} could not be loaded ({e}); promote another version"
            ) from e
        return ServedModel(
            bundle=bundle,
            explainer=TreeExplainer(
                bundle.booster_path,
                bundle.feature_names,
                blend=(bundle.scorer.column, bundle.scorer.weight),
            ),
            loaded_at=datetime.now(UTC),
        )

    def serve(self, version: str) -> None:
        """Load, check and swap in `version`; raises ModelRejected and keeps the old one."""
        served = self._load(version)
        # One reference assignment: a request that already took the old bundle finishes on it.
        self._served = served
        log.info("model version %s is in service", version)
        if self.metrics is not None:
            self.metrics.set_model(version, served.loaded_at.timestamp())
            self.metrics.model_reloads.labels(result="loaded").inc()

    def refresh(self) -> bool:
        """Serve the registry's promoted version if it changed; True when a new one was swapped in.

        A version that fails its checks is refused once (logged, counted, reported by
        `info`) and the current one keeps serving; it is tried again only after the pointer
        moves elsewhere and back. The challenger alias is followed the same way.
        """
        if self.registry is None:
            return False
        try:
            version = self.registry.current_version()
        except Exception:
            log.exception("could not read the registry pointer; keeping the model in service")
            return False
        self._refresh_challenger()
        if version is None or version == self.version:
            self._refused = None
            return False
        if self._refused is not None and version == self._refused.version:
            return False
        try:
            self.serve(version)
        except ModelRejected as e:
            self._refused = Refusal(version, str(e))
            log.error("refused model version %s, keeping %s: %s", version, self.version, e)
            if self.metrics is not None:
                self.metrics.model_reloads.labels(result="refused").inc()
            return False
        self._refused = None
        return True

    def _refresh_challenger(self) -> None:
        """Load the registry's challenger alias when it moved; drop it when it was cleared."""
        if self.registry is None:
            return
        try:
            wanted = self.registry.aliases().get(CHALLENGER)
        except Exception:
            log.exception("could not read the registry aliases; keeping the challenger")
            return
        current = self._challenger
        if wanted is None or wanted == self.version:
            # A challenger that became the champion is not compared with itself.
            self._challenger = None
            self._refused_challenger = None
            return
        if current is not None and current.bundle.version == wanted:
            return
        if self._refused_challenger is not None and self._refused_challenger.version == wanted:
            return
        try:
            self._challenger = self._load(wanted)
            self._refused_challenger = None
            log.info("challenger %s is scored in shadow", wanted)
        except ModelRejected as e:
            self._challenger = None
            self._refused_challenger = Refusal(wanted, str(e))
            log.error("refused challenger %s: %s", wanted, e)

    def info(self, total_candidates: int, shadow: tuple[int, int] = (0, 0)) -> ModelInfo:
        """The model in service as `GetModelInfo` reports it; NotReady when there is none.

        `shadow`: rankings scored and dropped by the shadow scorer (`ranker.shadow`)."""
        served = self.require()
        challenger = self._challenger
        refused = self._refused
        refused_challenger = self._refused_challenger
        return ModelInfo(
            version=served.bundle.version,
            feature_names=tuple(served.bundle.feature_names),
            card=served.bundle.card,
            loaded_at=served.loaded_at,
            total_candidates=total_candidates,
            fallback=served.fallback,
            refused_version=None if refused is None else refused.version,
            refused_error=None if refused is None else refused.error,
            challenger_version=None if challenger is None else challenger.bundle.version,
            refused_challenger=None if refused_challenger is None else refused_challenger.version,
            refused_challenger_error=None
            if refused_challenger is None
            else refused_challenger.error,
            shadow_scored=shadow[0],
            shadow_dropped=shadow[1],
        )
