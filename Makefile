# dcpviz: two commands do all the set-up on a fresh machine.
#   make demo   create .venv, install, simulate the default scenario, write report.html
#   make test   create/update .venv, check the import layers (lint-imports), run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dcpviz-installed

.PHONY: demo test lint bench bench-scale clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a range that admits a newer torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,notebook]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dcpviz demo --report report.html

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check dcpviz tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/bench_planning.py
	$(BIN)/python bench/bench_explorer.py

bench-scale: $(STAMP)
	$(BIN)/python bench/bench_scale.py

clean:
	rm -rf $(VENV) report.html .pytest_cache
