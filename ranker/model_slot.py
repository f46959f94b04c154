"""The model slot: which model version is in service, how a new one is checked and swapped in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ranker.api import ModelInfo
from ranker.errors import ModelRejected, NotReady
from ranker.explain import TreeExplainer
from ranker.metrics import ServiceMetrics

if TYPE_CHECKING:
    from ranker.registry import ModelBundle, ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A model bundle in service with what the pipeline derives from it."""

    bundle: ModelBundle
    explainer: TreeExplainer
    loaded_at: datetime


class ModelSlot:
    """Holds the model in service and follows the registry's promoted-version pointer.

    A request takes `served` once and finishes on that model even if a new one is swapped in
    meanwhile (the swap is one reference assignment). Thread-safe for that reason; `serve` and
    `refresh` are called from one thread at a time (start-up, then the upkeep thread).
    """

    def __init__(self, registry: ModelRegistry | None, metrics: ServiceMetrics | None) -> None:
        self.registry = registry
        self.metrics = metrics
        self._served: ServedModel | None = None
        # The version last refused: not retried until the pointer moves elsewhere and back.
        self._refused_version: str | None = None

    @property
    def served(self) -> ServedModel | None:
        return self._served

    @property
    def version(self) -> str | None:
        served = self._served
        return None if served is None else served.bundle.version

    def require(self) -> ServedModel:
        """The model in service; NotReady when there is none yet."""
        served = self._served
        if served is None:
            raise NotReady(
                "no model is in service yet; train and promote one (`ranker train`) and retry"
            )
        return served

    def serve_promoted(self) -> None:
        """Serve the registry's promoted version, if any (start-up); raises ModelRejected."""
        if self.registry is None:
            return
        version = self.registry.current_version()
        if version is not None:
            self.serve(version)
        else:
            log.warning(
                "no model version is promoted in %s; ranking is unavailable until one is "
                "(`ranker train`, or promote a version)",
                self.registry.root,
            )

    def serve(self, version: str) -> None:
        """Load, check and swap in `version`; raises ModelRejected and keeps the old one."""
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
        served = ServedModel(
            bundle=bundle,
            explainer=TreeExplainer(
                bundle.booster_path,
                bundle.feature_names,
                blend=(bundle.scorer.column, bundle.scorer.weight),
            ),
            loaded_at=datetime.now(UTC),
        )
        # One reference assignment: a request that already took the old bundle finishes on it.
        self._served = served
        log.info("model version %s is in service", version)
        if self.metrics is not None:
            self.metrics.set_model(version, served.loaded_at.timestamp())
            self.metrics.model_reloads.labels(result="loaded").inc()

    def refresh(self) -> bool:
        """Serve the registry's promoted version if it changed; True when a new one was swapped in.

        A version that fails its checks is refused once (logged, counted) and the current one
        keeps serving; it is tried again only after the pointer moves elsewhere and back.
        """
        if self.registry is None:
            return False
        try:
            version = self.registry.current_version()
        except Exception:
            log.exception("could not read the registry pointer; keeping the model in service")
            return False
        if version is None or version == self.version:
            self._refused_version = None
            return False
        if version == self._refused_version:
            return False
        try:
            self.serve(version)
        except ModelRejected as e:
            self._refused_version = version
            log.error("refused model version %s, keeping %s: %s", version, self.version, e)
            if self.metrics is not None:
                self.metrics.model_reloads.labels(result="refused").inc()
            return False
        self._refused_version = None
        return True

    def info(self, total_candidates: int) -> ModelInfo:
        """The model in service as `GetModelInfo` reports it; NotReady when there is none."""
        served = self.require()
        return ModelInfo(
            version=served.bundle.version,
            feature_names=tuple(served.bundle.feature_names),
            card=served.bundle.card,
            loaded_at=served.loaded_at,
            total_candidates=total_candidates,
        )
