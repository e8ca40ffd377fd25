# The two commands of the README. Both install what they need (idempotently).
# scripts/python.sh runs .venv's interpreter when scripts/install.sh made one
# (an externally managed Python, PEP 668), else $(PYTHON).
PYTHON ?= python3
export PYTHON

.PHONY: demo test install

demo:
	bash scripts/install.sh --demo
	bash scripts/run_demo.sh

test:
	bash scripts/install.sh --demo --browser
	bash scripts/python.sh -m ruff check .
	bash scripts/python.sh -m pytest -q -p no:cacheprovider tests

install:
	bash scripts/install.sh
