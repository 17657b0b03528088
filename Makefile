# secure-mcp-template: the set-up needs only Python 3.11+, make and git.
# `make test` takes kubectl and Node.js with npm from the wheels pinned in the `tools` group of
# pyproject.toml (tests/support/pinned_tools.py installs them into .cache), never the system's.
PYTHON ?= python3
# Tools the tests start keep their bytecode (tests/conftest.py says why).
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
UV := $(abspath $(BIN)/uv)
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out
# pytest-xdist workers for `make test`; the generated projects' suites run in parallel.
WORKERS ?= 2
# `make bench` measures each of these auth modes.
AUTH_MODES ?= mtls oauth mtls+oauth

.PHONY: help demo demo-stop test full-suites bench equivalence release fleet docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Bootstrap: a venv with uv from PyPI, then the pinned dev group of pyproject.toml.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep -o '"uv==[^"]*"' pyproject.toml | tr -d '"')"
	$(UV) pip install --quiet --python $(BIN)/python --group dev
	touch $@

demo: $(STAMP) demo-stop ## generate a project with default answers into demo-out/ and start its server
	$(BIN)/copier copy --defaults --overwrite --vcs-ref=HEAD . $(DEMO_DIR)
	cd $(DEMO_DIR) && $(UV) sync --quiet && .venv/bin/python scripts/dev_pki.py
	cd $(DEMO_DIR) && package=$$(sed -n 's/^package_name: //p' .copier-answers.yml) && \
		nohup .venv/bin/python -m $$package > .demo-server.log 2>&1 & echo $$! > $(DEMO_DIR)/.demo-server.pid
	$(BIN)/python tests/support/wait_ready.py http://127.0.0.1:9090/readyz $(DEMO_DIR)/.demo-server.log
	cd $(DEMO_DIR) && .venv/bin/python scripts/mcp_client.py
	@echo
	@echo "The server runs in the background: https://localhost:8443/mcp (mTLS), ops http://127.0.0.1:9090/metrics"
	@echo "Call it:  cd $(DEMO_DIR) && .venv/bin/python scripts/mcp_client.py search_runbooks '{\"query\": \"certificates\"}'"
	@echo "As operator:  cd $(DEMO_DIR) && .venv/bin/python scripts/mcp_client.py --identity operator revoke_session '{\"session_id\": \"sess_12345678\"}'"
	@echo "Logs and audit: $(DEMO_DIR)/.demo-server.log    Stop it: make demo-stop"

demo-stop: ## stop the demo server
	@if [ -f $(DEMO_DIR)/.demo-server.pid ]; then \
		kill $$(cat $(DEMO_DIR)/.demo-server.pid) 2>/dev/null || true; rm -f $(DEMO_DIR)/.demo-server.pid; \
		echo "demo server stopped"; fi

test: $(STAMP) ## the template's whole test suite (its own lint, renders, generated tests, linters)
	$(BIN)/ruff check tests hooks tools
	$(BIN)/ruff format --check tests hooks tools
	$(BIN)/pytest -n $(WORKERS) --dist loadgroup --durations=25

full-suites: $(STAMP) ## every answer combination's whole generated suite with its coverage gate (make test: one per auth mode and architecture)
	FULL_SUITES=1 $(BIN)/pytest -n $(WORKERS) --dist loadgroup tests/test_generated.py

bench: $(STAMP) ## render a project per auth mode and run its benchmark (bare SDK vs secure stack)
	for mode in $(AUTH_MODES); do \
		$(BIN)/copier copy --defaults --overwrite --vcs-ref=HEAD --quiet -d auth_mode=$$mode . .cache/bench-$$mode && \
		$(MAKE) -C .cache/bench-$$mode bench UV=$(UV) || exit 1; done

# The ref a refactor is compared with; paths expected to change go in ALLOW (space-separated globs).
BASE ?= HEAD
ALLOW ?=
equivalence: $(STAMP) ## render 12 answer combinations at BASE and in the working tree; compare files and kustomize objects
	$(BIN)/python tests/support/render_matrix.py render $(BASE) .cache/equivalence/base
	$(BIN)/python tests/support/render_matrix.py render HEAD .cache/equivalence/work
	$(BIN)/python tests/support/render_matrix.py compare .cache/equivalence/base .cache/equivalence/work $(foreach glob,$(ALLOW),--allow '$(glob)')

# What CI does on main, for a maintainer: HEAD must be the commit that dated the version's
# CHANGELOG.md section, the whole suite must pass on it, then the annotated tag.
release: $(STAMP) ## on the commit that dated VERSION's CHANGELOG section: make test, then tag vVERSION
	@test -n "$(VERSION)" || { echo "make release needs VERSION=X.Y.Z"; exit 2; }
	$(BIN)/python tools/release.py check $(VERSION)
	$(MAKE) test
	$(BIN)/python tools/release.py tag $(VERSION)

# `make fleet`: the services file (one repository a line, docs/fleet.md), FORMAT=json for the
# JSON document, FLEET_FLAGS for more (e.g. --fail-behind-security). Python and git only: no venv.
SERVICES ?= fleet.txt
FORMAT ?= table
FLEET_CACHE ?= .cache/fleet
fleet: ## each service's template and layer versions, answers, releases behind (security ones), open update branches
	@$(PYTHON) tools/fleet.py --services $(SERVICES) --cache $(FLEET_CACHE) $(if $(filter json,$(FORMAT)),--json) $(FLEET_FLAGS)

# mkdocs.yml: every page of docs/ in the nav; --strict fails on a broken link or anchor.
docs: $(STAMP) ## build the docs site (Material for MkDocs, --strict) into site/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean: demo-stop ## remove the venv, caches, the docs site and the demo project
	rm -rf $(VENV) .cache $(DEMO_DIR) .pytest_cache site
