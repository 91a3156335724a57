# The two commands a newcomer runs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VAR := var
DATABASE := sqlite:///$(VAR)/smtprelay.db
ADMIN := $(BIN)/smtprelay-admin --database $(DATABASE) --secret-key-file $(VAR)/secret.key
LISTEN := 127.0.0.1:2525

.PHONY: install run test lint clean bench

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test,lint]' --config-settings editable_mode=compat
	touch $@

# A self-signed certificate for STARTTLS on the demo relay.
$(VAR)/tls.crt:
	mkdir -p $(VAR)
	openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN=localhost \
	    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	    -keyout $(VAR)/tls.key -out $(VAR)/tls.crt 2>/dev/null
	chmod 600 $(VAR)/tls.key

# The demo tenant: login "demo", delivering into var/Maildir.
$(VAR)/demo.ready: $(VENV)/.installed
	mkdir -p $(VAR)
	$(ADMIN) db upgrade
	$(ADMIN) tenant show demo >/dev/null 2>&1 || $(ADMIN) tenant add demo --email demo@example.com --company "Demo Ltd"
	test -s $(VAR)/demo.password || (umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(15))" > $(VAR)/demo.password)
	$(ADMIN) tenant show demo | grep -q 'logins: *demo' || $(ADMIN) login add demo demo --password-stdin < $(VAR)/demo.password
	$(ADMIN) tenant show demo | grep -q 'maildir://' || $(ADMIN) upstream add demo maildir://$(CURDIR)/$(VAR)/Maildir
	$(ADMIN) tenant show demo | grep -q 'domains: *example.com' || $(ADMIN) domain add demo example.com
	touch $@

run: install $(VAR)/tls.crt $(VAR)/demo.ready
	@echo
	@echo "smtprelay is starting on $(LISTEN) (STARTTLS, AUTH PLAIN/LOGIN). Send a first message with:"
	@echo
	@echo "  swaks --server $(LISTEN) --tls --auth PLAIN --auth-user demo --auth-password $$(cat $(VAR)/demo.password) \\"
	@echo "        --from demo@example.com --to you@example.net"
	@echo
	@echo "It is delivered into $(VAR)/Maildir/new/. Stop the relay with Ctrl-C."
	@echo
	$(BIN)/twistd -n --pidfile= smtprelay --database $(DATABASE) --secret-key-file $(VAR)/secret.key \
	    --smtp tcp:$(lastword $(subst :, ,$(LISTEN))):interface=127.0.0.1 \
	    --tls-cert $(VAR)/tls.crt --tls-key $(VAR)/tls.key --hostname localhost

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# ruff (style, imports, common bugs) and mypy with mypy-zope (the interfaces at the seams).
lint: install
	$(BIN)/ruff check relay twisted tests bench examples
	$(BIN)/ruff format --check relay twisted tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(VAR) build *.egg-info

# Compare smtprelay with Postfix, an aiosmtpd proxy and Haraka (installs them
# with apt, pip and npm; root or sudo): on loopback (bench.compare), against
# an upstream 25 ms away (bench.latency) and in new TLS connections
# (bench.handshakes); each table also in bench/results/.  QUICK=1: smaller
# loads, one run (a few minutes). BENCH_ARGS (for bench.compare): see
# `.venv/bin/python -m bench.compare --help` and docs/benchmarks.md.
bench: install
	$(BIN)/python -m bench.compare $(if $(QUICK),--quick) $(BENCH_ARGS)
	$(BIN)/python -m bench.latency $(if $(QUICK),--quick) --no-install
	$(BIN)/python -m bench.handshakes $(if $(QUICK),--quick) --no-install
