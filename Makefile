# Two commands do all set-up on a fresh machine (README.md):
#   make serve   installs what is missing, then runs `realm serve` on the embedded default
#   make test    installs what is missing, then runs every test (what .ci/run calls)
.PHONY: serve test lint bench docker-locks

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
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_versions.py
	PYTHONPATH=$(CURDIR) .venv/bin/python bench/bench_colocation.py

# The images' hash-locked Python dependencies (docker/requirements-*.lock) from docker/requirements-*.in,
# resolved for Python 3.11 with every file's hash (tests/docker/test_dockerfiles.py checks them).
docker-locks:
	scripts/bootstrap.sh
	.venv/bin/python -m venv /tmp/realm-pip-tools
	/tmp/realm-pip-tools/bin/pip install -q pip-tools
	cd docker && for n in operator runtime runtime-gpu build cmake; do \
	  /tmp/realm-pip-tools/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links -o requirements-$$n.lock requirements-$$n.in || exit 1; \
	done
