# The two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing first.
# `make check` is the fast one for a change (about a minute, no root): lint, types, shellcheck and the unit tier.
.PHONY: setup demo test check check-setup lint collect shellcheck unit unit-tui unit-rest bench lab-down

# VENV=/path/to/.venv runs the checks with another venv (as it is: nothing is installed into it).
VENV ?= .venv
# POSIX sh run on the hosts and in the lab's image roots (no #! line: checked as sh), and the bash scripts here.
SH_SCRIPTS = core/remote/host.sh core/remote/probe.sh lab/image/configure.sh
BASH_SCRIPTS = scripts/setup.sh scripts/test-on-debian13.sh .ci/run

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/topdeck demo

# The lab's image hosts (Debian 13 and sid roots) are built once, cached in /var/cache/topdeck-lab/images.
# Both tiers: tests/unit/ and tests/lab/ (the lab needs root). The lab tests mostly wait (SSH, Nix, timeouts), so they
# run in TEST_JOBS pytest-xdist workers, each in network and mount namespaces of its own (tests/workerns.py), one test
# file per worker at a time (a file's labs are its module fixtures); TEST_JOBS=0 runs them in this process, one by one.
# The tests marked `alone` (a bound on time that the others' load could break) run after, by themselves (pytest exits
# 5 when PYTEST_ARGS leaves none of them).
TEST_JOBS ?= 3
test: setup
	.venv/bin/topdeck lab images --build
	.venv/bin/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --alone=skip --durations=20 $(PYTEST_ARGS)
	.venv/bin/python -m pytest -q -p no:xdist --alone=only $(PYTEST_ARGS) || [ $$? -eq 5 ]

# What needs neither root, Nix nor the lab; CI runs it before `make test`, so a type or unit error fails in a minute.
# Its parts run side by side (the TUI's unit tests, about two thirds of the tier's time, in a pytest of their own),
# each part's output printed whole when it ends.
check: check-setup
	@$(MAKE) --no-print-directory -j4 --output-sync=target lint collect shellcheck unit-tui unit-rest

check-setup:
ifeq ($(VENV),.venv)
	@scripts/setup.sh --check
endif

lint: check-setup
	$(VENV)/bin/ruff check --no-cache core cli tui lab tests bench
	$(VENV)/bin/mypy --cache-dir "$${TMPDIR:-/tmp}/topdeck-mypy-$$(id -u)"

# Every test of both tiers imports (a lab test importing a name that moved fails here, not 10 minutes into CI),
# and two collections name the same tests (pytest-xdist refuses test ids made from random data).
COLLECT = $(VENV)/bin/python -m pytest -p no:cacheprovider --collect-only -q tests
collect: check-setup
	@first=$$($(COLLECT) 2>&1) || { printf '%s\n' "$$first" | tail -n 40; exit 1; }; \
		second=$$($(COLLECT) 2>&1); \
		[ "$$(printf '%s' "$$first" | grep '::')" = "$$(printf '%s' "$$second" | grep '::')" ] || \
		{ echo "collect: two collections name different tests (a parametrize id made from random data?)"; exit 1; }

# Clean, with no exclusion list: each deliberate exception is a `# shellcheck disable=` beside its line, with why.
shellcheck: check-setup
	shellcheck -s sh $(SH_SCRIPTS)
	shellcheck $(BASH_SCRIPTS)

# The unit tier in one pytest run; `make check` runs the same tests as the two halves below, at once.
UNIT_PYTEST = $(VENV)/bin/python -m pytest -q -p no:cacheprovider
unit: check-setup
	$(UNIT_PYTEST) tests/unit $(PYTEST_ARGS)

# The TUI's tests mostly wait (pauses, a fake engine's phases): four workers; the rest in two.
unit-tui: check-setup
	$(UNIT_PYTEST) -n 4 $(wildcard tests/unit/test_tui_*.py) $(PYTEST_ARGS)

unit-rest: check-setup
	$(UNIT_PYTEST) -n 2 --ignore-glob='tests/unit/test_tui_*' tests/unit $(PYTEST_ARGS)

# Every benchmark against its baseline (needs root: it starts its own lab); writes bench/RESULTS.md.
# `.venv/bin/python -m bench --help` lists them; `.venv/bin/python -m bench NAME --quick` runs one, with fewer repeats.
bench: setup
	.venv/bin/python -m bench

lab-down: setup
	.venv/bin/topdeck lab down
