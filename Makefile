# The README's two commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT ?= Give three tips for staying healthy.

.PHONY: setup demo test bench default-model clean

setup:
	@bash scripts/setup.sh

# Threads: `--threads auto` (the default) uses the cores other processes leave free.
demo: setup
	$(VENV)/bin/pasta generate "$(PROMPT)" --show-tags --compare

# One torch thread: tiny test models gain nothing from two, and two threads on a busy 2-core machine thrash.
test: setup
	@bash scripts/setup.sh --llamacpp
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

bench: setup
	$(PY) bench/interpreter.py --json --threads 1

default-model: setup
	bash scripts/build_default_model.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
