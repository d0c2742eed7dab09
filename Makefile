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

bench:
	scripts/bootstrap.sh test,bench
	.venv/bin/python bench/bench_runtime.py $(ARGS)
	.venv/bin/python bench/bench_sandbox.py
	.venv/bin/python bench/bench_operator.py
	.venv/bin/python bench/bench_kv.py
	.venv/bin/python bench/bench_portable.py
