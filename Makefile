# Two commands do all set-up on a fresh machine (README.md):
#   make serve   installs what is missing, then runs `realm serve` on the embedded default
#   make test    installs what is missing, then runs every test (what .ci/run calls)
.PHONY: serve test lint bench

serve:
	scripts/bootstrap.sh
	.venv/bin/realm serve $(ARGS)

test:
	scripts/bootstrap.sh test,bench
	scripts/test.sh

lint:
	scripts/bootstrap.sh test,bench
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# The checkout first on the path: the benchmarks import bench.*, e2e.* and tests.* helpers by package.
bench:
	scripts/bootstrap.sh test,bench
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_runtime.py $(ARGS)
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_sandbox.py
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_operator.py
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_kv.py
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_portable.py
