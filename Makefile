# Three commands, all idempotent:
#   make run   set up .venv (first time / when requirements change) and start the app
#   make web   the in-browser page: npm ci (first time / when web/package-lock.json changes),
#              build web/dist and serve it on http://127.0.0.1:8502/ (the model runs in the browser)
#   make test  set up .venv with the test tools and the page's npm packages, run every test
PYTHON ?= python3.11
NPM ?= npm
VENV := .venv
BIN := $(VENV)/bin
# npm ci rewrites this file; its date tells make whether the lock changed since.
WEB_MODULES := web/node_modules/.package-lock.json

.PHONY: run test web
run: $(VENV)/.installed-run
	$(BIN)/streamlit run app.py

web: $(VENV)/.installed-run $(WEB_MODULES)
	$(BIN)/python tools/serve_web.py

# The browser tests build the site from web/node_modules themselves (tests/test_web.py).
test: $(VENV)/.installed-test $(WEB_MODULES)
	$(BIN)/python -m pytest

# Exactly the versions in web/package-lock.json, from the npm registry; no install scripts run.
$(WEB_MODULES): web/package.json web/package-lock.json
	@command -v $(NPM) >/dev/null 2>&1 || { echo "error: $(NPM) not found (Node.js 18+ with npm is required)"; exit 2; }
	cd web && $(NPM) ci --no-audit --no-fund --ignore-scripts
	touch $@

$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@ $(VENV)/.installed-run

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
