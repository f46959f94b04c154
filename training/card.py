"""Model cards: the JSON record of a model version and its readable MODEL_CARD.md."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ranker.features import FEATURES, FEATURES_VERSION
from training.labels import RELEVANT_LABEL, STAGE_LABEL

INTENDED_USE = (
    "Orders applicants or retrieved candidates for one job posting so a recruiter reviews the "
    "likeliest matches first. A decision aid for people: every shortlist is read by a recruiter, "
    "who sees the reasons (skills matched and missing, experience against the requirement)."
)
LIMITATIONS = (
    "Learnt from past hiring outcomes, so it repeats the choices recruiters made, including their "
    "biases; it ranks, it does not decide, and must not auto-reject anyone. It knows only what the "
    "CV text and structured fields say (skills listed, years, location), not ability. Scores are "
    "comparable within one posting only. Job families or countries missing from the training data "
    "are ranked mostly by text similarity. Retrain when postings or the candidate pool change. "
    "Training features come from the version of each candidate's record current when they "
    "applied to the posting (the store keeps every earlier version; a pair without an applied "
    "event uses its first event, and an event older than every stored version the version first "
    "stored), so a CV edited after a hire does not change what the model learnt from that "
    "application."
)
LEXICON_NOTE = (
    "BM25 reads the statistics of the pool it ranks from: when serving, the live pool's (every "
    "stored candidate now, following upserts and erasures), so words the training CVs lacked get "
    "the idf they have in the pool, not the maximum; in training, the training-time pool's (every "
    "stored candidate then), saved as lexicon.json to reproduce the training features. Terms in "
    "fewer than 3 CVs score as unseen in both, so lexicon.json holds only terms found in at least "
    "3 CVs, no single-CV words (names, e-mail fragments). Similarities also enter relative to the candidates retrieved for the "
    "posting (z-score and gap to the best), so the model ranks by 'better than the others for "
    "this posting' rather than by absolute levels learnt from one corpus."
)
FAIRNESS_NOTE = (
    "Structured protected attributes (sex, age, ethnicity, disability, name, photo) are never "
    "inputs: they are not part of the candidate record the feature builder reads, and a test "
    "enforces it. CV free text is redacted for common direct identifiers (labelled name, birth "
    "date, gender or nationality lines, e-mails, phone numbers, URLs, written-out birth dates and "
    "ages) before it is embedded or counted, but redaction is pattern-based and incomplete (an "
    "unlabelled name line stays), and the text still carries proxies: graduation and job years "
    "hint at age, names of schools, clubs or languages at origin or sex. Structured features "
    "correlate too (years of experience with age), and the labels themselves carry the past "
    "process's biases. So the card embeds a bias audit in the form NYC Local Law 144 asks for "
    "(selection and scoring rates per sex, race/ethnicity and their intersections, impact "
    "ratios against the most selected category with bootstrap CIs, flags below 0.8) of this "
    "model ranking its held-out postings as served (retrieval from the whole pool, then rerank); "
    "check it before promoting, and audit what was served with `ranker audit --frame served`."
)


def code_version(root: Path | None = None) -> str:
    """`git:<HEAD>` of the source tree, `-dirty` when it has uncommitted changes, else the package.

    Any change `git status --porcelain` shows (untracked files included) counts: HEAD alone then
    does not say which code trained the model.
    """
    root = root if root is not None else Path(__file__).resolve().parents[1]
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=True
            ).stdout

        head = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain").strip())
        return f"git:{head}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "package:" + version("candidate-ranker")
        except PackageNotFoundError:
            return "unknown"


def build_card(
    *,
    params: Mapping[str, Any],
    seed: int,
    best_iteration: int,
    metrics: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    data: Mapping[str, Any],
    parity: Mapping[str, Any],
    importance: Mapping[str, float],
    lexicon: Mapping[str, Any] | None = None,
    bias_audit: Mapping[str, Any] | None = None,
    mitigation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card's content (the registry adds `version` and file digests)."""
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "type": "LightGBM lambdarank, served as ONNX (onnxmltools)",
            "best_iteration": best_iteration,
        },
        "feature_names": [f.name for f in FEATURES],
        "features_version": FEATURES_VERSION,
        "features": {f.name: f.doc for f in FEATURES},
        "params": dict(params),
        "seed": seed,
        "labels": {
            "stages": {stage.value: label for stage, label in STAGE_LABEL.items()},
            "rule": "highest stage reached; a later rejection keeps it",
            "relevant_at_or_above": RELEVANT_LABEL,
            "gain_in_training": params.get("label_gain", "LightGBM default, 2^label - 1"),
            "gain_in_metrics": "2^label - 1",
        },
        "metrics": dict(metrics),
        "evaluation": dict(evaluation),
        "data": dict(data),
        "parity": dict(parity),
        "lexicon": {**(lexicon or {}), "note": LEXICON_NOTE},
        "feature_importance_gain": dict(importance),
        "bias_audit": dict(bias_audit) if bias_audit else {"skipped": "not computed"},
        "mitigation": dict(mitigation) if mitigation else {"method": "none"},
        "code_version": code_version(),
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "fairness_note": FAIRNESS_NOTE,
    }


def estimate_text(e: Mapping[str, Any], signed: bool = False) -> str:
    """`0.731 [0.650, 0.802]` (or `+0.031 [-0.004, +0.060]` for a difference); `-` when empty."""
    if e.get("mean") is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(e['mean'])} [{f.format(e['ci_low'])}, {f.format(e['ci_high'])}]"


def view_notes(view: Mapping[str, Any]) -> list[str]:
    """The sample sizes of one evaluation view, in words."""
    notes = [f"{view['postings']} postings"]
    if view.get("postings_skipped_one_applicant"):
        notes.append(f"{view['postings_skipped_one_applicant']} more with one applicant skipped")
    if "relevant_applicants" in view:
        notes.append(
            f"{view['relevant_retrieved']} of {view['relevant_applicants']} relevant applicants "
            f"retrieved from a pool of {view['pool_candidates']}"
        )
    notes.append(
        f"{view['postings_without_relevant']} without an applicant at the relevance threshold "
        "(counted; MRR and recall undefined there)"
    )
    notes.append(
        f"{view['postings_all_labels_zero']} with every label 0 (counted; NDCG undefined there)"
    )
    if view.get("warning"):
        notes.append(view["warning"])
    return notes


def _view_markdown(title: str, view: Mapping[str, Any]) -> list[str]:
    metrics = view["metrics"]
    if not metrics:
        return [f"### {title}", "", "No posting to evaluate.", ""]
    names = list(next(iter(metrics.values())))
    lines = [
        f"### {title}",
        "",
        view["description"][:1].upper()
        + view["description"][1:]
        + ". "
        + "; ".join(view_notes(view))
        + ".",
        "",
        "| ranker | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for ranker, values in metrics.items():
        lines.append(f"| {ranker} | " + " | ".join(estimate_text(values[m]) for m in names) + " |")
    first = next(iter(metrics.values()))
    lines.append("| n (postings defined) | " + " | ".join(str(first[m]["n"]) for m in names) + " |")
    lines += [
        "",
        'Paired differences (same postings; "no significant difference" when the 95% interval '
        "includes 0):",
        "",
        "| comparison | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for pair, per in view["differences"].items():
        cells = []
        for m in names:
            d = per[m]
            text = estimate_text(d, signed=True)
            cells.append(text if d["verdict"] in ("higher", "lower") else f"{text} {d['verdict']}")
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def evaluation_markdown(ev: Mapping[str, Any]) -> list[str]:
    """The held-out evaluation (both views, baselines, paired differences) as markdown lines."""
    in_service = ev.get("in_service")
    if in_service and in_service.get("compared"):
        service = f"Compared with {in_service['version']} (in service) on the same postings."
    elif in_service:
        service = (
            f"Not compared with {in_service['version']} (in service): "
            f"{in_service.get('reason', '-')}"
        )
    else:
        service = "No version was in service to compare with."
    lines = [
        f"Held-out postings: {ev['postings']} created from {ev.get('held_out_from', '-')} on "
        f"({ev.get('held_out_rule', '-')}). {service}",
        "",
        f"Relevant = label >= {ev['relevant_at_or_above']} (interviewed or beyond). "
        f"{ev['intervals']} {ev['ties']}",
        "",
        "Baselines: "
        + "; ".join(f"`{name}`: {doc}" for name, doc in ev["baselines"].items())
        + ".",
        "",
    ]
    views = ev["views"]
    lines += _view_markdown("Applicant view", views["applicants"])
    lines += _view_markdown(f"Pool view (as served, retrieve_n {ev['retrieve_n']})", views["pool"])
    lines += [ev["unlabelled"], ""]
    return lines


def gates_markdown(gates: Mapping[str, Any] | None) -> list[str]:
    """The promotion gates section (`training.gates`), or nothing when none were checked."""
    if not gates:
        return []
    verdict = "passed" if gates.get("passed") else "**failed**"
    lines = [
        "## Promotion gates",
        "",
        f"Checked {gates.get('checked_at', '?')} against "
        f"{gates.get('in_service') or 'nothing'} in service: {verdict}. "
        f"{gates.get('rule_note', '')}",
        "",
        "| gate | required | measured | result | detail |",
        "|---|---|---|---|---|",
    ]
    for g in gates.get("gates", []):
        lines.append(
            f"| {g['gate']} | {g['required']} | {g['measured']} | "
            f"{'pass' if g['passed'] else 'FAIL'} | {g.get('detail', '')} |"
        )
    return [*lines, ""]


def _blend_line(blend: Mapping[str, Any] | None) -> str:
    if not blend:
        return "- Served score: the model's score alone"
    tried = ", ".join(f"{w}: {v:.3f}" for w, v in blend.get("validation_ndcg@10", {}).items())
    return (
        f"- Served score: model score + {blend['weight']:g} x `{blend['feature']}` "
        f"({blend.get('rule', '')}; validation NDCG@10 by weight: {tried or '-'})"
    )


def _fitting_line(fitting: Mapping[str, Any] | None) -> str:
    if not fitting:
        return "- Fitted: not recorded"
    where = f" on {fitting['workers']} Dask workers" if "workers" in fitting else ""
    return (
        f"- Fitted: {fitting['engine']}{where}, {fitting['rounds_trained']} rounds trained, "
        f"{fitting['best_iteration']} kept ({fitting['rule']})"
    )


def render_markdown(card: Mapping[str, Any]) -> str:
    """MODEL_CARD.md: the same facts as model_card.json, for people."""
    data = card["data"]
    split = data["split"]
    lines = [
        f"# Model card: candidate ranker {card['version']}",
        "",
        f"- Created: {card['created_at']}",
        f"- Model: {card['model']['type']}, {card['model']['best_iteration']} trees (best "
        "iteration by validation NDCG@10)",
        f"- Seed: {card['seed']}",
        f"- Code version: {card['code_version']}",
        f"- Training data sha256: `{data['sha256']}`",
        f"- ONNX parity: max |ONNX - LightGBM| = {card['parity']['max_abs_diff']:.2e} on "
        f"{card['parity']['rows']} rows",
        _fitting_line(card["model"].get("fitting")),
        _blend_line(card.get("blend")),
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Limits",
        "",
        card["limitations"],
        "",
        "## Data",
        "",
        f"- Candidates: {data['counts']['candidates']}, postings: {data['counts']['postings']}, "
        f"outcome events: {data['counts']['outcomes']}",
        f"- Time split by posting creation: train {split['first_posting']} .. "
        f"{split['valid_start']}, validation .. {split['test_start']}, test .. "
        f"{split['last_posting']}",
        "- Queries (postings) / labelled rows: "
        + ", ".join(f"{name} {q} / {data['rows'][name]}" for name, q in data["queries"].items()),
        f"- Lexicon (BM25 statistics): {card.get('lexicon', {}).get('note', '-')}",
        "",
        "## Labels",
        "",
        "Highest stage reached per (posting, candidate): "
        + ", ".join(f"{s} {v}" for s, v in card["labels"]["stages"].items())
        + ". A later rejection keeps the highest stage. Gain of each label in training and "
        f"early stopping: {card['labels'].get('gain_in_training', '-')}; in the metrics below: "
        f"{card['labels'].get('gain_in_metrics', '2^label - 1')}.",
        "",
        "## Evaluation on held-out postings",
        "",
        *evaluation_markdown(card["evaluation"]),
        *gates_markdown(card.get("gates")),
        "## Features (in model input order)",
        "",
        *(f"{i + 1}. `{name}`: {doc}" for i, (name, doc) in enumerate(card["features"].items())),
        "",
        "## Parameters",
        "",
        *(f"- {k}: {v}" for k, v in card["params"].items()),
        "",
        "## Fairness",
        "",
        card["fairness_note"],
    ]
    lines += ["", *mitigation_markdown(card.get("mitigation", {"method": "none"}))]
    lines += ["", *bias_audit_markdown(card.get("bias_audit", {}))]
    return "\n".join(lines) + "\n"


def mitigation_markdown(m: Mapping[str, Any]) -> list[str]:
    """The training-time mitigation line of the card."""
    if m.get("method", "none") == "none":
        return ["Training-time bias mitigation: none (`ranker train --mitigation reweigh`)."]
    return [
        f"Training-time bias mitigation: {m['method']} by `{m['attribute']}` x {m['labels']} "
        f"labels ({m['reference']}), {m['applied_to']}; weights {m['weights']['min']} .. "
        f"{m['weights']['max']}.",
    ]


def bias_audit_markdown(audit: Mapping[str, Any]) -> list[str]:
    """The card's bias audit section: flags, then each dimension's impact ratios."""
    lines = ["### Bias audit (LL144 form): held-out postings, pool view", ""]
    if "skipped" in audit or "meta" not in audit:
        return [*lines, f"Not computed: {audit.get('skipped', 'no audit in this card')}."]
    sample, cfg = audit["sample"], audit["config"]
    lines.append(
        f"{audit['meta']['data_source']}; {sample['rankings']} rankings, {sample['rows']} rows, "
        f"{sample['candidates']} candidates. Selected = top {cfg['k']}; impact ratio = a "
        f"category's rate / the highest category's rate; flagged below {cfg['threshold']:g}, "
        "significant when the whole 95% interval is below. `ranker audit --frame model` prints "
        "the full report."
    )
    ndcg = audit.get("ndcg@10")
    if ndcg and ndcg.get("mean") is not None:
        lines.append(f"NDCG@10 of the same rankings: {estimate_text(ndcg)} (n = {ndcg['n']}).")
    lines.append("")
    flags = audit.get("flags", [])
    significant = [f for f in flags if f["significant"]]
    lines.append(
        f"Flags: {len(flags)} impact ratios below {cfg['threshold']:g}, {len(significant)} "
        "significantly."
    )
    for f in flags[:10]:
        ci = f["impact_ratio_ci"]
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(
            f"- {f['dimension']} = {f['category']}, {f['metric']}: {f['impact_ratio']:.3f} "
            f"{ci_text}{' (significant)' if f['significant'] else ''}"
        )
    metrics = [m["key"] for m in audit["metrics"]]
    for dim in audit["dimensions"]:
        if "×" in dim["name"] or not dim["categories"]:
            continue  # intersections: flags above, full tables in the JSON
        lines += [
            "",
            f"`{dim['name']}` ({dim['unknown']['rows']} rows of unknown category, not compared):",
            "",
            "| category | share | "
            + " | ".join(f"{m} rate | {m} impact ratio [95% CI]" for m in metrics)
            + " |",
            "|---|---:|" + "---:|---|" * len(metrics),
        ]
        for cat in dim["categories"]:
            cells = []
            for m in metrics:
                r = cat["rates"][m]
                rate = "-" if r["rate"] is None else f"{r['rate']:.4f}"
                if cat["excluded"]:
                    ratio = "excluded (under 2%)"
                elif r["impact_ratio"] is None:
                    ratio = "-"
                else:
                    ci = r["impact_ratio_ci"]
                    ratio = f"{r['impact_ratio']:.3f}" + (
                        f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
                    )
                cells += [rate, ratio]
            lines.append(f"| {cat['name']} | {cat['share']:.1%} | " + " | ".join(cells) + " |")
    return lines
