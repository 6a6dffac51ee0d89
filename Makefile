# K1: `make run` starts the platform, `make test` runs the whole suite. Both set up first.
.PHONY: setup run test lint clean

setup:
	scripts/setup.sh run

run:
	scripts/run.sh

# The checks first (seconds), then the suite against real servers.
test:
	scripts/setup.sh test
	$(MAKE) lint
	.venv/bin/pytest $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check k1 tests bench celeryconfig.py
	.venv/bin/mypy

clean:
	rm -rf .venv .k1 artifacts
