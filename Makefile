# A fresh machine: `make demo`, `make check` (quick tier), `make test` (everything; what CI runs).
# Installs are pinned: requirements/lock.txt holds the exact versions the suite passed with;
# `make lock` refreshes it against the newest releases and runs the suite, `make test-latest` tries
# the newest releases in a separate environment without touching the lock.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LATEST ?= .venv-latest
# uv installs the lock in seconds where pip takes minutes; pinned like everything else.
UV_VERSION ?= 0.13.10
# torch first and pinned: on our machines 2.13.0 is a local CPU build (pip's find-links); elsewhere
# add the CPU index, e.g. TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'.
TORCH_PIP_ARGS ?=
# Where the offline AG News sample lives; falls back to the hub's ag_news when missing.
LORAFIT_DATA ?= ../shared/data/agnews
PYTEST_ARGS ?=
# pytest-xdist workers: one per core, at most 4 (each test's torch uses the cores too)
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install test check demo lock test-latest clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements/lock.txt requirements/torch.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	# sync: exactly the lock (removes what an older lock installed), then torch and lorafit itself.
	# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (these
	# machines) no process ever writes one, so every process compiled transformers/peft/sympy from source:
	# `import peft` 17 s -> 8 s, paid by each lorafit command and each of the suite's subprocesses.
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements/lock.txt
	$(BIN)/pip install -q --no-deps $(TORCH_PIP_ARGS) -r requirements/torch.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/uv pip check -q --python $(BIN)/python
	touch $@

test: install
	$(BIN)/python -m pytest -q -n $(WORKERS) $(PYTEST_ARGS)

# The quick tier: unit tests on tiny models, no `slow` test (bench smoke tests, compile, DDP, sweep
# workers, real-model integration, server processes). <= 2 minutes on 2 cores.
check: install
	$(BIN)/python -m pytest -q -n $(WORKERS) -m 'not slow' $(PYTEST_ARGS)

demo: install
	LORAFIT_DATA=$(LORAFIT_DATA) $(BIN)/python -m lorafit.demo

# Refresh the lock against the newest releases, install it, run the whole suite.
lock:
	test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q uv==$(UV_VERSION); }
	UV=$(BIN)/uv requirements/compile.sh
	$(MAKE) test

# The newest releases of everything (torch pinned as always), in $(LATEST); the lock is untouched.
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --no-deps $(TORCH_PIP_ARGS) -r requirements/torch.txt
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c requirements/torch.txt -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -n $(WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) runs
