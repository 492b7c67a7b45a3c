# The two commands of the README. Each bootstraps what it needs first (idempotent, fast when done).
PY := .venv/bin/python

.PHONY: serve test lint bootstrap

bootstrap:
	@deploy/bootstrap.sh

# The demo corpus: OpenClipart exported as a collection (a manifest and a symlink), made once.
DEMO_COLLECTION := var/demo/openclipart/manifest.jsonl

serve: bootstrap $(DEMO_COLLECTION)
	@$(PY) -m service

$(DEMO_COLLECTION):
	@$(PY) -m training export-collection openclipart $(dir $@)

test: bootstrap
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m pytest -q

lint: bootstrap
	@$(PY) -m ruff check . && $(PY) -m ruff format --check .
