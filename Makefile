# The two commands a fresh machine needs: `make run` and `make test`. Each installs
# the project and its dependencies into .venv first (again only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test bench clean browser

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Lookalike needs Python 3.11 or newer: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(INSTALLED)
	$(BIN)/python scripts/run_local.py

test: $(INSTALLED) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The web page's test drives Debian's Chromium; install it where we can (root, apt-get).
# Where no browser can be installed that test is skipped, and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "make: no Chromium could be installed; tests/test_web_page.py will be skipped"

clean:
	rm -rf $(VENV) .data .pytest_cache *.egg-info

bench: $(INSTALLED)
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/search.py $(BENCH_ARGS)
	$(BIN)/python bench/load.py $(BENCH_ARGS)
	$(BIN)/python bench/moderation.py $(BENCH_ARGS)
	$(BIN)/python bench/quality.py $(BENCH_ARGS)
