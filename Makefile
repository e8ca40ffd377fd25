# The two commands of the README. Both install what they need (idempotently).
# scripts/python.sh runs .venv's interpreter when scripts/install.sh made one
# (an externally managed Python, PEP 668), else $(PYTHON).
PYTHON ?= python3
export PYTHON

.PHONY: demo demo-noisy test install

demo:
	bash scripts/install.sh --demo
	bash scripts/run_demo.sh

# Optional: the same demo with 40% wrong captions, single-view beside the tag view (docs/ablation.md).
demo-noisy:
	bash scripts/install.sh --demo
	bash scripts/run_demo_noisy.sh

test:
	bash scripts/install.sh --demo --browser
	bash scripts/python.sh -m ruff check .
	bash scripts/python.sh -m pytest -q -p no:cacheprovider tests

install:
	bash scripts/install.sh
