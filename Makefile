# nginx-sse — build, test, demo.
#
#   make build            module for the installed nginx (Debian's nginx-core + nginx-dev)
#   make build-vendored   module + nginx binary for ngx's bundled nginx (mainline 1.28)
#   make test             cargo test + prove t/ + the browser client's unit and
#                         end-to-end tests (Chromium), against a real nginx and redis-server
#   make demo             the demo on loopback (redis + nginx + publisher)
#   make deb              target/deb/libnginx-mod-http-sse_<version>_<arch>.deb (packaging/)
#   make deb-test         build, install, run, remove and purge that package on this
#                         machine's nginx (root only; part of make test)
#   make bench            benchmark against nchan (bench/README.md)
#   make deps             apt packages a fresh Debian machine lacks

SHELL := /bin/bash
CARGO ?= cargo
NGINX_BIN ?= /usr/sbin/nginx
NGINX_SRC ?= /usr/share/nginx/src

# A writable, configured copy of Debian's nginx source: nginx-sys generates its
# bindings from objs/ngx_auto_config.h, so the module's signature matches
# /usr/sbin/nginx exactly.
DEBIAN_TREE := $(CURDIR)/target/nginx-debian
DEBIAN_OBJS := $(DEBIAN_TREE)/objs
# Debian's own compiler flags for nginx (as `nginx -V` shows them).
DEBIAN_CC_OPT := -g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -Wdate-time -D_FORTIFY_SOURCE=2
DEBIAN_LD_OPT := -Wl,-z,relro -Wl,-z,now -fPIC

MODULE := target/release/libngx_http_sse_module.so
VENDORED_TARGET := $(CURDIR)/target/vendored

APT_PACKAGES := nginx-core nginx-dev libclang-dev redis-server make gcc perl curl python3 python3-venv chromium iproute2 prometheus dpkg-dev
NPM ?= npm
JS_DIR := clients/js

SSE_MODULE ?= $(CURDIR)/$(MODULE)

.PHONY: build build-vendored test test-vendored unit prove py-test js-deps js-test lint demo deps clean-nginx-tree bench

build: $(DEBIAN_OBJS)/ngx_auto_config.h
	NGINX_BUILD_DIR=$(DEBIAN_OBJS) $(CARGO) build --release
	@echo "built $(MODULE) for $$($(NGINX_BIN) -v 2>&1)"

$(DEBIAN_OBJS)/ngx_auto_config.h:
	@test -f $(NGINX_SRC)/conf_flags || { echo "$(NGINX_SRC) missing: run 'make deps' (needs nginx-dev)"; exit 1; }
	rm -rf $(DEBIAN_TREE) && mkdir -p $(dir $(DEBIAN_TREE))
	cp -r $(NGINX_SRC) $(DEBIAN_TREE)
	cd $(DEBIAN_TREE) && source ./conf_flags && \
	  ./configure "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(DEBIAN_CC_OPT)" --with-ld-opt="$(DEBIAN_LD_OPT)" > configure.log 2>&1 \
	  || { tail -20 configure.log; exit 1; }

clean-nginx-tree:
	rm -rf $(DEBIAN_TREE)

# ngx's `vendored` feature builds its bundled nginx and leaves a runnable
# binary next to the bindings; we copy it to target/vendored/nginx.
build-vendored:
	CARGO_TARGET_DIR=$(VENDORED_TARGET) $(CARGO) build --release --features vendored
	@bin=$$(ls -t $(VENDORED_TARGET)/release/build/nginx-sys-*/out/objs/nginx 2>/dev/null | head -1); \
	  test -n "$$bin" || { echo "vendored nginx binary not found"; exit 1; }; \
	  cp "$$bin" $(VENDORED_TARGET)/nginx; \
	  echo "built $(VENDORED_TARGET)/release/libngx_http_sse_module.so and $(VENDORED_TARGET)/nginx ($$($(VENDORED_TARGET)/nginx -v 2>&1))"; \
	  echo "test it with: make prove NGINX_BIN=$(VENDORED_TARGET)/nginx SSE_MODULE=$(VENDORED_TARGET)/release/libngx_http_sse_module.so"

unit:
	$(CARGO) test -p sse-core -p sse-bench

lint: $(DEBIAN_OBJS)/ngx_auto_config.h
	$(CARGO) fmt --all -- --check
	NGINX_BUILD_DIR=$(DEBIAN_OBJS) $(CARGO) clippy --workspace --all-targets -- -D warnings

prove: build
	NGINX_BIN=$(NGINX_BIN) SSE_MODULE=$(SSE_MODULE) prove -j2 -r t/

# The browser client (clients/js): its npm packages from the lockfile, then
# build, type checks, unit tests (vitest) and end-to-end tests in headless
# Chromium against the module built above (node's test runner).
js-deps:
	@command -v node >/dev/null && command -v $(NPM) >/dev/null || $(MAKE) --no-print-directory deps APT_PACKAGES="nodejs npm"
	cd $(JS_DIR) && $(NPM) ci --no-audit --no-fund --loglevel=error

js-test: js-deps build
	cd $(JS_DIR) && SSE_MODULE=$(SSE_MODULE) NGINX_BIN=$(NGINX_BIN) $(NPM) test

# The Debian package, in the layout of Debian's libnginx-mod-* packages; its
# Depends carries the nginx ABI read from nginx-dev (packaging/build-deb.sh).
# deb-test installs it on the system nginx (root only, skipped otherwise).
.PHONY: deb deb-test
DEB_DIR := target/deb
deb: build
	NGINX_SRC=$(NGINX_SRC) bash packaging/build-deb.sh $(MODULE) $(DEB_DIR)

deb-test:
	bash packaging/test-deb.sh

# The Python publisher (clients/python): a virtualenv with redis-py and
# pytest, unit tests and end-to-end tests against nginx + module + redis.
py-test: build
	SSE_MODULE=$(SSE_MODULE) NGINX_BIN=$(NGINX_BIN) bash clients/python/test.sh

# The README's test command: everything, from a fresh machine.
test: deps unit prove deb-test py-test js-test

test-vendored: build-vendored
	NGINX_BIN=$(VENDORED_TARGET)/nginx SSE_MODULE=$(VENDORED_TARGET)/release/libngx_http_sse_module.so prove -j2 -r t/

# Side by side with nchan (not part of `make test`); see bench/README.md.
# BENCH_ARGS=--quick for a smoke run.
bench: build
	@$(MAKE) --no-print-directory deps APT_PACKAGES=libnginx-mod-nchan
	$(CARGO) run --release -p sse-bench -- $(BENCH_ARGS)

# The README's demo command.
demo: deps build
	bash demo/run.sh $(CURDIR)/$(MODULE)

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi
