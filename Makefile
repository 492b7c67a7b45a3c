# The two commands of the README. Each bootstraps what it needs first (idempotent, fast when done).
PY := .venv/bin/python

.PHONY: serve test lint bootstrap

bootstrap:
	@deploy/bootstrap.sh

serve: bootstrap
	@$(PY) -m service

test: bootstrap
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m pytest -q

lint: bootstrap
	@$(PY) -m ruff check . && $(PY) -m ruff format --check .
