"""`python -m bench [SECTION ...]`: run benchmark sections and write BENCHMARKS.md at the repo root.

A section is any public module of this package with `run() -> str` (Markdown, starting with a
`## ` heading) and optionally `TITLE`. Sections run in ORDER, then any others alphabetically.
Running only some sections rewrites just theirs in BENCHMARKS.md and keeps the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import bench
from bench import _machine
from ranker.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("encoder", "ingest", "scoring", "serving", "memory")
"""Sections in report order; a new section module is picked up without being listed here."""
KEPT = "*(kept from an earlier run; not re-measured with this header)*"
NOT_SECTIONS = ("realtext", "fairness")
"""Public modules that are not speed sections: `realtext` is ranking quality (`make evaluate`),
`fairness` the bias mitigations (`make fairness`, FAIRNESS.md)."""


def _discover() -> list[str]:
    names = [
        m.name
        for m in pkgutil.iter_modules(bench.__path__)
        if not m.name.startswith("_") and m.name not in NOT_SECTIONS
    ]
    return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)


def _load(name: str) -> ModuleType:
    module = importlib.import_module(f"bench.{name}")
    if not callable(getattr(module, "run", None)):
        raise SystemExit(f"bench.{name} has no run() -> str; it is not a benchmark section")
    return module


def _marker(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def _existing_sections(text: str) -> dict[str, str]:
    found = re.finditer(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", text, flags=re.S)
    return {m.group(1): m.group(2) for m in found}


def main(argv: list[str] | None = None) -> int:
    available = _discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"default: all ({', '.join(available)})")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in available]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {available}")
    chosen = args.sections or available
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    previous = _existing_sections(args.out.read_text()) if args.out.exists() else {}
    load_start = _machine.load_average()
    run_started = time.perf_counter()
    bodies: dict[str, str] = {}
    for name in chosen:
        module = _load(name)
        started = time.perf_counter()
        print(f"[bench] {name}: running", file=sys.stderr, flush=True)
        bodies[name] = module.run().rstrip() + "\n"
        print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    minutes = (time.perf_counter() - run_started) / 60
    parts = [_machine.header(chosen, load_start, minutes), ""]
    for name in [n for n in available if n in bodies or n in previous]:
        start, end = _marker(name)
        body = bodies.get(name, previous.get(name, ""))
        if name not in bodies and not body.startswith(KEPT):
            body = KEPT + "\n\n" + body
        parts += [start, body.rstrip() + "\n", end, ""]
    write_text_atomic(args.out, "\n".join(parts))
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
