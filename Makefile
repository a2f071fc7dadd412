# The two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing first.
.PHONY: setup demo test lint bench lab-down

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/topdeck demo

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check core tui lab tests bench
	.venv/bin/mypy core lab

lab-down: setup
	.venv/bin/topdeck lab down
