# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Where the offline AG News sample lives; falls back to the hub's ag_news when missing.
LORAFIT_DATA ?= ../shared/data/agnews

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: on our machines 2.13.0 is a local CPU build; unpinned pulls CUDA (GBs).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	LORAFIT_DATA=$(LORAFIT_DATA) $(BIN)/python -m lorafit.demo

clean:
	rm -rf $(VENV) runs
