# The two commands of the README. Both install what they need (idempotently).
PYTHON ?= python3
export PYTHON

.PHONY: demo test install

demo:
	bash scripts/install.sh --demo
	bash scripts/run_demo.sh

test:
	bash scripts/install.sh --demo --browser
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

install:
	bash scripts/install.sh
