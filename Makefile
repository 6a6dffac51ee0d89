# K1: `make run` starts the platform, `make test` runs the whole suite. Both set up first.
.PHONY: setup run test lint clean bench

setup:
	scripts/setup.sh run

run:
	scripts/run.sh

# The checks first (seconds), then the suite against real servers.
test:
	scripts/setup.sh test
	$(MAKE) lint
	.venv/bin/pytest $(PYTEST_ARGS)

# `make bench`: every benchmark in bench/ in turn, each with small arguments so that the
# whole run stays under ~20 minutes on 2 cores (docs/benchmarks.md states the full ones).
# Modules that are not benchmarks are listed in BENCH_HELPERS.
BENCH_HELPERS = __init__ baseline_tasks platform_app platform_bench web_before
BENCHES = $(filter-out $(BENCH_HELPERS),$(basename $(notdir $(wildcard bench/*.py))))
BENCH_ARGS_platform = --quick
BENCH_ARGS_events = --tasks 1000 --runs 1 --duration 5
BENCH_ARGS_realtime = --quick --duration 8 --tasks 200
BENCH_ARGS_recovery = --rows 100000 --tasks 500
BENCH_ARGS_conductor = --workflows 30
BENCH_ARGS_scheduling = --seconds 20

bench:
	scripts/setup.sh test
	set -e; $(foreach b,$(BENCHES),echo "== python -m bench.$(b) $(BENCH_ARGS_$(b))"; \
		.venv/bin/python -m bench.$(b) $(BENCH_ARGS_$(b));)

lint:
	.venv/bin/ruff check k1 tests bench celeryconfig.py
	.venv/bin/mypy

clean:
	rm -rf .venv .k1 artifacts
