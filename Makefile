# The two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing first.
.PHONY: setup demo test lint bench lab-down

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/topdeck demo

# The lab's image hosts (Debian 13 and sid roots) are built once, cached in /var/cache/topdeck-lab/images.
test: setup
	.venv/bin/topdeck lab images --build
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check core cli tui lab tests bench
	.venv/bin/mypy

# Every benchmark against its baseline (needs root: it starts its own lab); writes bench/RESULTS.md.
# `.venv/bin/python -m bench --help` lists them; `.venv/bin/python -m bench NAME --quick` runs one, with fewer repeats.
bench: setup
	.venv/bin/python -m bench

lab-down: setup
	.venv/bin/topdeck lab down
