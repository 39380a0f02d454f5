# The two commands a fresh machine needs: `make run` and `make test`. Each installs
# the project and its dependencies into .venv first (again only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test bench clean browser nginx spec lint

install: $(INSTALLED)

$(INSTALLED): pyproject.toml client/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Lookalike needs Python 3.11 or newer: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' && $(BIN)/python -m pip install --quiet -e ./client
	touch $@

run: $(INSTALLED)
	$(BIN)/python scripts/run_local.py

test: $(INSTALLED) browser nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Compose puts nginx in front of the API (deploy/nginx/); tests/test_slow_clients.py runs that config
# with Debian's nginx, installed here where we can (root, apt-get). Without it that test FAILS.
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null && \
		  [ -x /usr/sbin/nginx ]; } || \
		echo "*** make: nginx could not be installed (needs root and apt-get); tests/test_slow_clients.py will FAIL" >&2

# The web page's test drives Debian's Chromium; install it where we can (root, apt-get).
# Without a browser that test FAILS; LOOKALIKE_TEST_WITHOUT_BROWSER=1 make test skips it knowingly.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null && \
		  command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
		{ if [ "$$LOOKALIKE_TEST_WITHOUT_BROWSER" = 1 ]; then \
		    echo "make: no Chromium; LOOKALIKE_TEST_WITHOUT_BROWSER=1, so tests/test_web_page.py will be skipped" >&2; \
		  else \
		    printf '%s\n' "" "*** make: Chromium and chromedriver could not be installed (needs root and apt-get)." \
		      "*** tests/test_web_page.py will FAIL. Install chromium and chromium-driver, or run" \
		      "*** LOOKALIKE_TEST_WITHOUT_BROWSER=1 make test to skip the web page's test knowingly." "" >&2; \
		  fi; }

# What CI runs before the tests: ruff over the code, mypy over shared/ (pyproject.toml configures both).
lint: $(INSTALLED)
	$(BIN)/ruff check api shared worker scripts tests bench client deploy
	$(BIN)/mypy

# The committed OpenAPI document (docs/openapi.json), written from the routes; tests/test_openapi.py fails
# when it drifts. Client generators read it: openapi-python-client generate --path docs/openapi.json
spec: $(INSTALLED)
	$(BIN)/python -m api.openapi docs/openapi.json

clean:
	rm -rf $(VENV) .data .pytest_cache *.egg-info

bench: $(INSTALLED)
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/search.py $(BENCH_ARGS)
	$(BIN)/python bench/load.py $(BENCH_ARGS)
	$(BIN)/python bench/moderation.py $(BENCH_ARGS)
	$(BIN)/python bench/quality.py $(BENCH_ARGS)
	$(BIN)/python bench/scale.py $(BENCH_ARGS)
	$(BIN)/python bench/pipeline.py $(BENCH_ARGS)
