# Every target is one line; see README "Quick start". PY is the project's virtual environment.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= photos

.PHONY: install run test lint typecheck bench bench-retrieval demo-model clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV); $(PY) -m pip install -q --no-cache-dir --upgrade pip && $(PY) -m pip install -q --no-cache-dir -r requirements-dev.txt && $(PY) -m pip install -q --no-deps -e . && touch $(STAMP)

install: $(STAMP)

demo-model: install
	$(PY) -m scripts.demo_model --demo $(DEMO)

run: install
	$(PY) -m scripts.run_demo --demo $(DEMO)

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: install
	$(PY) -m scripts.bench_service --out benchmarks/service && $(PY) -m scripts.bench_search_resnet50 --out benchmarks/service && $(PY) -m scripts.bench_scale_http --out benchmarks/service

bench-retrieval: install
	$(PY) -m scripts.bench --stage all

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
