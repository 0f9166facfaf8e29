# make test: fresh machine -> .venv, lint, types, tests.  make demo: the embedded federation.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint typecheck pytest demo bench chromium databases proto clean bench-peers profile-ecdh

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium (and CJK fonts, so the Chinese report renders) for the browser test of
# report.html; installed only when missing.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -q "Noto Sans CJK"; } || { \
	  echo "installing Debian chromium and fonts-noto-cjk for the report test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium fonts-noto-cjk >/dev/null) \
	  || echo "warning: chromium could not be installed; browser tests will fail"; }

# Debian's PostgreSQL and MariaDB servers: the database-source tests and the demo start
# their own throwaway servers (xmatch/localdb.py); installed only when missing.
databases:
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v mariadbd >/dev/null 2>&1; } || { \
	  echo "installing Debian postgresql and mariadb-server for the database-source tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    postgresql mariadb-server >/dev/null) \
	  || echo "warning: postgresql/mariadb-server could not be installed; database tests will fail"; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install chromium databases
	$(VENV)/bin/pytest -q -n 2

test: lint typecheck pytest

demo: install databases
	$(VENV)/bin/xmatch demo --workdir demo-run

bench: install
	$(VENV)/bin/xmatch bench

# SecretFlow (spu 0.9.5 pins numpy<2 and jax) in its own virtualenv, for
# `xmatch bench --baseline secretflow`; make test never needs it.
PEERS ?= .venv-peers
$(PEERS)/.installed-stamp:
	python3 -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q spu==0.9.5
	touch $@

bench-peers: $(PEERS)/.installed-stamp

# py-spy over one 100k x 100k ecdh bench round (both parties and their workers), summarized.
PROFILE_SIZE ?= 100000
profile-ecdh: install
	$(VENV)/bin/py-spy record --subprocesses --rate 100 --format raw --output ecdh-profile.txt -- \
	  $(VENV)/bin/xmatch bench --sizes $(PROFILE_SIZE) --protocol ecdh --no-baseline --out bench-profile
	$(PY) benchmarks/profile_summary.py ecdh-profile.txt

proto: install
	$(PY) -m proto.build

clean:
	rm -rf $(VENV) $(PEERS) demo-run .pytest_cache .mypy_cache .ruff_cache .benchmarks
