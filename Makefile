# dcpviz: two commands do all the set-up on a fresh machine.
#   make demo   create .venv, install, simulate the default scenario, write report.html
#   make test   create/update .venv, check style (ruff format --check, ruff check) and the import
#               layers (lint-imports), run the whole test suite
#               in a random order (pytest-randomly); it prints the seed, replay with `make test SEED=N`
#   make mutate mutation testing (mutmut, one worker) of the modules where a wrong answer is costly;
#               slow (tens of minutes), not for every CI run; the table goes to bench/MUTATION.md
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dcpviz-installed

.PHONY: demo test lint bench bench-scale mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a range that admits a newer torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,notebook]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dcpviz demo --report report.html

# A fresh order every run; the seed is printed first so a failure replays with `make test SEED=N`
# (or: pytest -p randomly --randomly-seed=N). Tests must pass alone, per file and in any order.
# Two workers (pytest-xdist) fit the 2-core CI machine; WORKERS=0 runs in one process, where a
# seed replays the exact order (with workers, which worker runs a test depends on timing).
WORKERS ?= 2
ifndef SEED  # drawn once (a `?=` would draw again at each use)
SEED := $(shell $(PYTHON) -c 'import random; print(random.randrange(2**31))')
endif

# torchtitan 0.2.2's own source, unpacked but not installed (installing it would pull its training
# stack and could pull another torch): tests/torchtitan_models.py builds its models and runs its
# parallelize code to check the presets and recipe="torchtitan" against them.
TORCHTITAN := $(VENV)/torchtitan-0.2.2
$(TORCHTITAN): | $(BIN)/python
	$(BIN)/python -m pip download -q --no-deps torchtitan==0.2.2 -d $(VENV)/wheels
	$(BIN)/python -m zipfile -e $(VENV)/wheels/torchtitan-0.2.2-py3-none-any.whl $(TORCHTITAN).part
	mv $(TORCHTITAN).part $(TORCHTITAN)

test: $(STAMP) $(TORCHTITAN)
	$(BIN)/ruff format --check dcpviz tests bench examples
	$(BIN)/ruff check dcpviz tests bench examples
	$(BIN)/lint-imports
	@echo "test order: pytest-randomly seed $(SEED) (replay: make test SEED=$(SEED) [WORKERS=0])"
	DCPVIZ_TORCHTITAN=$(abspath $(TORCHTITAN)) $(BIN)/python -m pytest -q -ra --durations=15 -n $(WORKERS) -p randomly --randomly-seed=$(SEED)

lint: $(STAMP)
	$(BIN)/ruff check dcpviz tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/bench_planning.py
	$(BIN)/python bench/bench_explorer.py

bench-scale: $(STAMP)
	$(BIN)/python bench/bench_scale.py

mutate: $(STAMP)
	$(BIN)/python bench/mutate.py

clean:
	rm -rf $(VENV) report.html .pytest_cache
