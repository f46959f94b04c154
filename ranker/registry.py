"""The model registry: one folder per version, a pointer to the version in service, promote/rollback.

Layout under the registry root:

    v0001/  model.onnx  model.txt  lexicon.json  check.json  model_card.json  MODEL_CARD.md
            evaluations/20250301T093000.123456Z.json ...  (`ranker evaluate` results, appended)
    v0002/  ...
    current.json   {"current": "v0002", "history": ["v0001", "v0002"],
                    "aliases": {"challenger": "v0003"}, "events": [...]}
    .lock          serialises writers (registering, promoting, rolling back, aliases)

Aliases name versions: `champion` is the version in service (`current`, moved by promote and
rollback only); `challenger` is the one the service scores in shadow (`ranker.shadow`); any other
name is free for the team's own use. Every change is an event with its time, actor and reason.
`gates.json` in a version folder holds its promotion gate results (`training.gates`); promotion
by the CLI requires them to have passed against the version in service, or `--force --reason`.

A version folder is written under a temporary name and renamed into place, so a reader sees a
whole version or none. `current.json` is replaced atomically (temp file + os.replace), so a reader
sees the old pointer or the new one, never half of either. `history` is the list of promoted
versions, the last one in service; `rollback` steps back through it.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from embeddings.config import OrtSessionSettings
from embeddings.files import sha256_file
from ranker.atomic import write_text_atomic
from ranker.errors import InvalidInput, ModelRejected, NotFound
from ranker.features import FEATURE_NAMES, FEATURES_VERSION, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.scorer import BLEND_FEATURE, PARITY_TOLERANCE, BlendedScorer, OnnxScorer

POINTER_FILE = "current.json"
MODEL_FILE = "model.onnx"
BOOSTER_FILE = "model.txt"
LEXICON_FILE = "lexicon.json"
CHECK_FILE = "check.json"
CARD_FILE = "model_card.json"
CARD_MD_FILE = "MODEL_CARD.md"
EVALUATIONS_DIR = "evaluations"
GATES_FILE = "gates.json"
LOCK_FILE = ".lock"
CHAMPION = "champion"
"""The alias of the version in service (the pointer's `current`)."""
CHALLENGER = "challenger"
"""The alias of the version scored in shadow beside the champion."""

_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def os_user() -> str:
    """The OS user running this process (by uid, not from the environment)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def resolve_actor(flag: str | None, configured: str | None) -> str:
    """Who a registry change is recorded as: `--actor`, else `Settings.actor`, else the OS user."""
    for name in (flag, configured):
        if name and name.strip():
            return name.strip()
    return os_user()


@dataclass(frozen=True)
class GateVerdict:
    """Whether a version's stored gate results allow promoting it now, and if not why."""

    version: str
    report: dict[str, Any] | None
    """`gates.json`, or None when the version has none."""
    problem: str | None
    """None when the gates passed against the version now in service."""

    @property
    def ok(self) -> bool:
        return self.problem is None


_VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ModelBundle:
    """A loaded model version: everything serving needs to rank and explain with it."""

    version: str
    feature_names: tuple[str, ...]
    card: dict[str, Any]
    scorer: BlendedScorer
    """What ranks: the ONNX model's score plus the card's blend (`scorer.model` alone is the
    exported model)."""
    builder: FeatureBuilder
    booster_path: Path
    """LightGBM's native model (TreeSHAP explanations use it)."""
    check_rows: np.ndarray
    check_scores: np.ndarray

    def check(self) -> None:
        """Raise `ModelRejected` unless both model files agree with this code and with each other.

        The card's feature names must be this code's; `model.onnx` (what serving scores with) and
        `model.txt` (what TreeSHAP explains with) must both load, `model.txt` must name the same
        features, and both must reproduce the scores stored at training time on the check rows.
        """
        if self.feature_names != FEATURE_NAMES:
            raise ModelRejected(
                f"model {self.version} was trained on features {list(self.feature_names)}, this "
                f"code builds {list(FEATURE_NAMES)}; retrain with `ranker train` or roll back"
            )
        trained_on = self.card.get("features_version")
        if trained_on != FEATURES_VERSION:
            raise ModelRejected(
                f"model {self.version} was trained with feature code version {trained_on}, this "
                f"code computes version {FEATURES_VERSION}; retrain with `ranker train`"
            )
        if self.scorer.n_features not in (None, len(FEATURE_NAMES)):
            raise ModelRejected(
                f"model {self.version} takes {self.scorer.n_features} features, the builder makes "
                f"{len(FEATURE_NAMES)}; retrain with `ranker train`"
            )
        retrain = "retrain (`ranker train`) or roll back (`ranker models rollback`)"
        # Imported here: LightGBM (with scipy and sklearn) takes seconds to import, and commands
        # that only read the registry (`ranker models list`, `ranker drift`) never need it.
        import lightgbm as lgb

        try:
            booster = lgb.Booster(model_file=str(self.booster_path))
        except (lgb.basic.LightGBMError, OSError, ValueError) as e:
            raise ModelRejected(
                f"model {self.version}'s {self.booster_path.name} is not a loadable LightGBM "
                f"model ({str(e).strip()}); {retrain}"
            ) from e
        if tuple(booster.feature_name()) != FEATURE_NAMES:
            raise ModelRejected(
                f"model {self.version}'s {self.booster_path.name} names features "
                f"{booster.feature_name()}, this code builds {list(FEATURE_NAMES)}; {retrain}"
            )
        onnx = self.scorer.model.score(self.check_rows).astype(np.float64)
        native = (
            np.asarray(booster.predict(self.check_rows), dtype=np.float64).reshape(-1)
            if len(self.check_rows)
            else np.zeros(0)
        )
        stored = self.check_scores.astype(np.float64)
        for what, got in (("ONNX", onnx), ("LightGBM", native)):
            if got.shape != stored.shape or not np.all(np.isfinite(got)):
                raise ModelRejected(
                    f"model {self.version}: {what} gave no usable scores on its check rows; "
                    f"{retrain}"
                )
        for what, a, b in (
            ("ONNX scores differ from LightGBM's", onnx, native),
            ("ONNX scores differ from those recorded at training", onnx, stored),
            ("LightGBM scores differ from those recorded at training", native, stored),
        ):
            diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
            if diff > PARITY_TOLERANCE:
                raise ModelRejected(
                    f"model {self.version}'s {what} by {diff:.2e} on its check rows (allowed "
                    f"{PARITY_TOLERANCE:g}); {retrain}"
                )


class ModelRegistry:
    """Model versions in folders under `root`, and the pointer to the one in service."""

    def __init__(self, root: Path, session: OrtSessionSettings | None = None) -> None:
        self.root = Path(root)
        self.session = session
        """How ONNX Runtime runs the versions' scorers (`Settings.ort_session`)."""

    # -- reading ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Registered versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), d.name)
            for d in self.root.iterdir()
            if (m := _VERSION_RE.match(d.name)) and (d / CARD_FILE).is_file()
        ]
        return [name for _, name in sorted(found)]

    def version_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise InvalidInput(f"{version!r} is not a model version; versions look like v0001")
        path = self.root / version
        if not (path / CARD_FILE).is_file():
            known = ", ".join(self.versions()) or "none yet (run `ranker train`)"
            raise NotFound(f"model version {version} is not in {self.root}; known: {known}")
        return path

    def _pointer(self) -> dict[str, Any]:
        path = self.root / POINTER_FILE
        if not path.is_file():
            return {"current": None, "history": [], "aliases": {}, "events": []}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelRejected(
                f"{path} is not valid JSON ({e}); fix it or promote a version again: "
                "`ranker models promote VERSION`"
            ) from e
        return dict(data)

    def current_version(self) -> str | None:
        """The version in service, or None when nothing was promoted yet."""
        current = self._pointer().get("current")
        return str(current) if current else None

    def history(self) -> list[str]:
        """Promoted versions in order; the last one is in service."""
        return [str(v) for v in self._pointer().get("history", [])]

    def aliases(self) -> dict[str, str]:
        """Alias -> version: `champion` (in service, when any) and the named aliases."""
        pointer = self._pointer()
        out: dict[str, str] = {}
        if pointer.get("current"):
            out[CHAMPION] = str(pointer["current"])
        out.update({str(k): str(v) for k, v in dict(pointer.get("aliases") or {}).items()})
        return out

    def events(self) -> list[dict[str, Any]]:
        """Every pointer and alias change, oldest first (time, action, version, actor, reason)."""
        return [dict(e) for e in self._pointer().get("events", [])]

    def gates(self, version: str) -> dict[str, Any] | None:
        """The version's stored promotion gate results (`gates.json`), or None."""
        path = self.version_dir(version) / GATES_FILE
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text("utf-8")))

    def gate_verdict(self, version: str, in_service: str | None) -> GateVerdict:
        """May `version` be promoted now, by its stored gates? `in_service` is what serves now:
        the champion, else the fallback's version name, else None."""
        report = self.gates(version)
        redo = f"re-check them: `ranker gates {version}`, or promote with --force --reason TEXT"
        if report is None:
            return GateVerdict(
                version, None, f"{version} has no gate results ({GATES_FILE}); {redo}"
            )
        if report.get("in_service") != in_service:
            return GateVerdict(
                version,
                report,
                f"{version}'s gates were measured against {report.get('in_service') or 'nothing'} "
                f"in service, now {in_service or 'nothing'} is; {redo}",
            )
        if not report.get("passed"):
            failed = [g["gate"] for g in report.get("gates", []) if not g.get("passed")]
            return GateVerdict(
                version,
                report,
                f"{version} failed the gate(s) {', '.join(failed)}; promote it anyway only with "
                "--force --reason TEXT",
            )
        return GateVerdict(version, report, None)

    def card(self, version: str) -> dict[str, Any]:
        """The version's model card (model_card.json)."""
        return dict(json.loads((self.version_dir(version) / CARD_FILE).read_text("utf-8")))

    def load(self, version: str | None = None) -> ModelBundle:
        """Load a version (default: the one in service); call `.check()` before serving it."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise NotFound(
                    f"no model version is in service in {self.root}; train and promote one: "
                    "`ranker train`"
                )
        return self._load_dir(self.version_dir(version), version)

    def _load_dir(self, folder: Path, version: str) -> ModelBundle:
        card = json.loads((folder / CARD_FILE).read_text("utf-8"))
        for name, digest in card.get("files", {}).items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise ModelRejected(
                    f"{folder / name} is missing or changed since version {version} was "
                    "registered; retrain (`ranker train`) or roll back (`ranker models rollback`)"
                )
        check = json.loads((folder / CHECK_FILE).read_text("utf-8"))
        blend = card.get("blend") or {"feature": BLEND_FEATURE, "weight": 0.0}
        names = list(card["feature_names"])
        if blend["feature"] not in names:
            raise ModelRejected(
                f"model {version}'s card blends in feature {blend['feature']!r}, which its "
                f"features {names} lack; retrain (`ranker train`)"
            )
        return ModelBundle(
            version=version,
            feature_names=tuple(card["feature_names"]),
            card=card,
            scorer=BlendedScorer(
                OnnxScorer(folder / MODEL_FILE, self.session),
                names.index(blend["feature"]),
                float(blend["weight"]),
            ),
            builder=FeatureBuilder(Lexicon.from_json((folder / LEXICON_FILE).read_text("utf-8"))),
            booster_path=folder / BOOSTER_FILE,
            check_rows=np.asarray(check["rows"], dtype=np.float32).reshape(
                -1, len(card["feature_names"])
            ),
            check_scores=np.asarray(check["scores"], dtype=np.float32),
        )

    def evaluations(self, version: str) -> list[dict[str, Any]]:
        """The version's stored evaluation results (`ranker evaluate`), oldest first."""
        folder = self.version_dir(version) / EVALUATIONS_DIR
        if not folder.is_dir():
            return []
        return [dict(json.loads(p.read_text("utf-8"))) for p in sorted(folder.glob("*.json"))]

    # -- writing ---------------------------------------------------------------------------
    def record_evaluation(self, version: str, result: Mapping[str, Any]) -> Path:
        """Store an evaluation of `version` as `evaluations/<UTC time>.json`, written atomically.

        Outside the card's file digests, so adding one never invalidates the version.
        """
        folder = self.version_dir(version) / EVALUATIONS_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}.json"
        write_text_atomic(path, json.dumps(dict(result), indent=2) + "\n")
        return path

    def record_gates(self, version: str, report: Mapping[str, Any]) -> Path:
        """Store `version`'s promotion gate results as `gates.json` (replacing earlier ones).

        Outside the card's file digests, so re-checking the gates never invalidates the version.
        """
        path = self.version_dir(version) / GATES_FILE
        write_text_atomic(path, json.dumps(dict(report), indent=2) + "\n")
        return path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry's writer lock (waits for another writer, in any process)."""
        self.root.mkdir(parents=True, exist_ok=True)
        # A fresh lock per call: flock on its own descriptor, so two writers in one process
        # exclude each other as two processes do. The file stays so every writer locks one inode.
        with FileLock(self.root / LOCK_FILE, preserve_lock_file=True, thread_local=False):
            yield

    def register(
        self,
        *,
        onnx_model: bytes,
        booster_text: str,
        lexicon: Lexicon,
        check_rows: np.ndarray,
        check_scores: np.ndarray,
        card: Mapping[str, Any],
        render_card: Callable[[Mapping[str, Any]], str],
    ) -> str:
        """Write a new version atomically and return its name; it is not promoted.

        Refuses (`ModelRejected`) whatever `ModelBundle.check` refuses: feature names differing
        from this code's, or ONNX or LightGBM not reproducing `check_scores` (LightGBM's own
        predictions of `check_rows`) within `PARITY_TOLERANCE`.
        """
        with self._locked():
            existing = [int(v[1:]) for v in self.versions()]
            # Also skip numbers of half-written folders left by a crash.
            taken = existing + [
                int(m.group(1)) for d in self.root.iterdir() if (m := _VERSION_RE.match(d.name))
            ]
            version = f"v{max(taken, default=0) + 1:04d}"
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{version}."))
            try:
                (tmp / MODEL_FILE).write_bytes(onnx_model)
                (tmp / BOOSTER_FILE).write_text(booster_text, encoding="utf-8")
                (tmp / LEXICON_FILE).write_text(lexicon.to_json(), encoding="utf-8")
                rows = np.asarray(check_rows, dtype=np.float32)
                (tmp / CHECK_FILE).write_text(
                    json.dumps(
                        {
                            "rows": rows.tolist(),
                            "scores": np.asarray(check_scores, dtype=np.float64).tolist(),
                        }
                    ),
                    encoding="utf-8",
                )
                full = dict(card)
                full["version"] = version
                full["files"] = {
                    name: sha256_file(tmp / name)
                    for name in (MODEL_FILE, BOOSTER_FILE, LEXICON_FILE, CHECK_FILE)
                }
                (tmp / CARD_FILE).write_text(
                    json.dumps(full, indent=2, sort_keys=False) + "\n", encoding="utf-8"
                )
                self._load_dir(tmp, version).check()
                (tmp / CARD_MD_FILE).write_text(render_card(full), encoding="utf-8")
                os.rename(tmp, self.root / version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return version

    def _set_pointer(
        self,
        pointer: dict[str, Any],
        action: str,
        version: str | None,
        *,
        actor: str | None,
        reason: str | None,
        **extra: Any,
    ) -> None:
        history = list(pointer.get("history", []))
        events = list(pointer.get("events", []))
        events.append(
            {
                "at": datetime.now(UTC).isoformat(),
                "action": action,
                "version": version,
                "actor": actor or os_user(),
                "reason": reason or "",
                **extra,
            }
        )
        pointer = {
            "current": history[-1] if history else None,
            "history": history,
            "aliases": dict(pointer.get("aliases") or {}),
            "events": events,
        }
        write_text_atomic(self.root / POINTER_FILE, json.dumps(pointer, indent=2) + "\n")

    def promote(
        self,
        version: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        forced: bool = False,
        gates: str | None = None,
    ) -> None:
        """Put `version` in service after checking it loads and predicts (`ModelRejected` if not).

        Mechanism only: the promotion gates are the caller's policy (`gate_verdict`; the CLI
        and `training.train` apply them). `forced` and `gates` ("passed", "failed", "not
        checked") are recorded in the event with `actor` and `reason`. A promoted challenger
        loses its challenger alias (it is the champion now).
        """
        self.load(version).check()
        with self._locked():
            pointer = self._pointer()
            if pointer.get("current") == version:
                return
            pointer["history"] = [*pointer.get("history", []), version]
            extra: dict[str, Any] = {"forced": forced}
            if gates is not None:
                extra["gates"] = gates
            previous = pointer.get("current")
            if previous:
                extra["replaced"] = previous
            aliases = dict(pointer.get("aliases") or {})
            if aliases.get(CHALLENGER) == version:
                del aliases[CHALLENGER]
                extra["cleared_alias"] = CHALLENGER
            pointer["aliases"] = aliases
            self._set_pointer(pointer, "promote", version, actor=actor, reason=reason, **extra)

    def rollback(self, *, actor: str | None = None, reason: str | None = None) -> str:
        """Put the previously promoted version back in service and return it."""
        with self._locked():
            pointer = self._pointer()
            history = list(pointer.get("history", []))
            if len(history) < 2:
                raise NotFound(
                    "no earlier promoted version to roll back to; promote one by name: "
                    "`ranker models promote VERSION`"
                )
            previous = history[-2]
            self.load(previous).check()
            pointer["history"] = history[:-1]
            self._set_pointer(
                pointer,
                "rollback",
                previous,
                actor=actor,
                reason=reason,
                replaced=history[-1],
            )
            return previous

    def set_alias(
        self, alias: str, version: str, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        """Point `alias` at `version` (checked like a promotion); not `champion` (promote)."""
        if alias == CHAMPION:
            raise InvalidInput(
                "the champion is the version in service; move it with `ranker models promote`"
            )
        if not _ALIAS_RE.match(alias):
            raise InvalidInput(
                f"{alias!r} is not an alias name; use lower-case letters, digits, - and _"
            )
        self.load(version).check()
        with self._locked():
            pointer = self._pointer()
            if alias == CHALLENGER and pointer.get("current") == version:
                raise InvalidInput(
                    f"{version} is the champion (in service); a challenger must be another version"
                )
            aliases = dict(pointer.get("aliases") or {})
            before = aliases.get(alias)
            aliases[alias] = version
            pointer["aliases"] = aliases
            self._set_pointer(
                pointer,
                "set-alias",
                version,
                actor=actor,
                reason=reason,
                alias=alias,
                replaced=before,
            )

    def clear_alias(
        self, alias: str, *, actor: str | None = None, reason: str | None = None
    ) -> str:
        """Remove `alias`; returns the version it named (NotFound when it is not set)."""
        with self._locked():
            pointer = self._pointer()
            aliases = dict(pointer.get("aliases") or {})
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise NotFound(f"no alias {alias!r} is set; set aliases: {known}")
            version = str(aliases.pop(alias))
            pointer["aliases"] = aliases
            self._set_pointer(
                pointer, "clear-alias", version, actor=actor, reason=reason, alias=alias
            )
            return version
