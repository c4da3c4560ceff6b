# The two commands the README starts with, and a few more.
.PHONY: demo test lint typecheck bench

demo:  ## the demo site on http://127.0.0.1:8000 (embedded: SQLite, in-memory layer, threads)
	bash scripts/demo

test:  ## the whole suite: lint, both Python x Django legs, SQLite and PostgreSQL
	bash scripts/test

lint:
	bash scripts/test lint

typecheck:  ## mypy --strict and the import-linter layers contract alone (`make lint` runs them too)
	bash scripts/test typecheck

bench:  ## benchmarks; rewrites docs/performance.md
	bash scripts/bench
