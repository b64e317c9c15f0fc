# pagelens: `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The exact versions the tests passed with, with hashes (`make lock` regenerates them from
# pyproject.toml): requirements.lock for running, requirements-dev.lock adds the dev tools.
LOCK   := requirements-dev.lock
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock $(LOCK) | cksum | cut -d' ' -f1)
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --unsafe-package torch --no-emit-index-url --no-emit-find-links

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Debian packages some tests drive for real (Prometheus, its exporters, a compose parser, and the
# headless browser the web page is tested in).
DEB_PACKAGES := prometheus prometheus-postgres-exporter prometheus-redis-exporter docker-compose chromium

.PHONY: install lock system-deps run test lint bench web clean

$(STAMP): pyproject.toml requirements.lock $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: pip picks the local CPU build; left to resolve, it pulls a CUDA build.
	# It is not in the lock (whose hashes would be the CUDA build's), so the lock finds it installed;
	# its own dependencies are in the lock, hash-checked like the rest.
	$(BIN)/python -m pip install --quiet --no-deps torch==2.13.0
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	# pagelens itself: its dependencies are all in the lock, and setuptools (locked) builds it.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# After changing dependencies in pyproject.toml: pin the newest versions that fit, with hashes.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/pip-compile || $(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile $(LOCK_FLAGS) --output-file requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra dev --constraint requirements.lock --output-file $(LOCK) pyproject.toml

# `make run PORT=8080 WORKERS=2`: the API's port and how many workers.
PORT    ?= 8000
WORKERS ?= 1

run: install
	$(BIN)/pagelens run --port $(PORT) --workers $(WORKERS)

# As root with apt, install what is missing; otherwise the tests that need a binary skip with a
# reason (under CI=true they fail instead).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		missing=""; \
		for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		fi; \
	else \
		echo "not root: not installing $(DEB_PACKAGES); tests that need them skip"; \
	fi

test: install system-deps
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# `make bench` runs every benchmark; `make bench BENCH="api e2e"` only those named.
# python3-doc: the real pages of the worker-throughput benchmark (it says so and skips without them).
bench: install
	@$(MAKE) --no-print-directory system-deps DEB_PACKAGES="python3-doc"
	$(BIN)/python -m bench $(BENCH)

# Rebuild the web page's script and styles (app/static/) from web/; needs Node.js and npm. The
# built files are committed, so `make run` never needs them.
web:
	web/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/node_modules
