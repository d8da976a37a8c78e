# Two commands on a fresh machine:  `make atlas`  and  `make test`.
# Both create/refresh the virtual environment first (pyproject.toml pins the direct dependencies,
# constraints.txt every package of the environment).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PRESET ?= mini
OUT    ?= build

.PHONY: setup atlas test test-fast validate bench notebooks clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# The main job: a complete offline atlas on the mini model, exported to build/CSP-Atlas (load_dataset-ready).
atlas: setup
	$(PY) scripts/build_atlas.py --preset $(PRESET) --out $(OUT)

# Every test, the executed notebooks included.
test: setup
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbmake notebooks

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

validate: setup
	$(PY) scripts/validate_atlas.py $(OUT)/CSP-Atlas

# Re-execute the committed notebooks on the mini atlas (their stored outputs come from it).
notebooks: atlas
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build .pytest_cache
