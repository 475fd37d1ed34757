# Two commands, both idempotent:
#   make run   set up .venv (first time / when requirements change) and start the app
#   make test  set up .venv with the test tools and run every test
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test
run: $(VENV)/.installed-run
	$(BIN)/streamlit run app.py

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@ $(VENV)/.installed-run

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
