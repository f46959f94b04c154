"""Memory: the server's resident memory and bytes per candidate in the index and the store."""

from __future__ import annotations

from collections.abc import Sequence

from bench._data import BaseSet
from bench._report import mib, table
from bench.serving import ServingConfig, SizeResult, results
from ranker.config import Settings

TITLE = "Memory"


def run(cfg: ServingConfig = ServingConfig()) -> str:  # noqa: B008
    """The Markdown section; reuses the serving section's servers when it already ran."""
    base, sized = results(cfg)
    return report(base, sized)


def report(base: BaseSet, sized: Sequence[SizeResult]) -> str:
    """The Markdown section for candidate sets measured by the serving section."""
    dim = len(base.candidates[0].doc_vector)
    raw = dim * 4
    rows = []
    for r in sized:
        rows.append(
            [
                f"{r.n:,}",
                mib(r.rss_loaded),
                mib(r.rss_served),
                mib(r.baseline_rss),
                f"{r.rss_served / r.n / 1024:.1f} KiB",
                f"{r.index_bytes / r.n:,.0f} B",
                f"{r.store_bytes / r.n:,.0f} B",
            ]
        )
    marginal = ""
    if len(sized) >= 2 and sized[-1].n > sized[0].n:
        lo, hi = sized[0], sized[-1]
        per = (hi.rss_loaded - lo.rss_loaded) / (hi.n - lo.n)
        marginal = (
            f" Between {lo.n:,} and {hi.n:,} candidates the loaded server grows by "
            f"{per / 1024:.1f} KiB per candidate (the per-candidate cost without the fixed "
            "cost of the runtime, the encoder and the model)."
        )
    cv_bytes = sum(len(c.candidate.cv_text.encode()) for c in base.candidates) / len(
        base.candidates
    )
    chunks = sum(len(c.chunk_vectors) for c in base.candidates) / len(base.candidates)
    lines = [
        f"## {TITLE}",
        "",
        "Resident memory (RSS, psutil) of the `ranker serve` process of the serving section, "
        "right after it became SERVING and after all its rankings; beside it, how much the "
        "straightforward stack grew the bench process when it loaded the same set (prepared "
        "candidates, a flat index, the booster: approximate, Python does not return all freed "
        "memory). Bytes per candidate are file sizes divided by the candidate count.",
        "",
        table(
            [
                "candidates",
                "server RSS loaded",
                "server RSS after rankings",
                "baseline stack (growth)",
                "server RSS / candidate",
                "index file / candidate",
                "store (SQLite + WAL) / candidate",
            ],
            rows,
        ),
        "",
        f"For scale: one {dim}-d float32 vector is {raw:,} B (the service's index stores "
        f"vectors as `{Settings().index_storage}`, RANKER_INDEX_STORAGE); the "
        f"store keeps, per candidate, the CV text ({cv_bytes:,.0f} B on average here), the "
        f"document vector and {chunks:.1f} chunk vectors on average "
        f"({raw * (1 + chunks):,.0f} B of vectors), and the structured fields.{marginal}",
    ]
    return "\n".join(lines) + "\n"
