GO        ?= go
BIN       := bin
DEMO_ADDR ?= 127.0.0.1:8080

# make install [PREFIX=/usr/local] [DESTDIR=staging dir for packagers]
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
MANDIR    ?= $(PREFIX)/share/man
DATADIR   ?= $(PREFIX)/share

# The version baton reports (--version, status, its start-up log line):
# git describe in a checkout; else the binary falls back to the Go module
# version, else "dev".
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS   := $(if $(VERSION),-X main.version=$(VERSION))

# urfave_cli_no_docs leaves urfave/cli's man page generator (and the
# markdown library it links, whose package initialisation every exec of
# baton would pay, each new master's included) out of the installed baton;
# docs prints the page with a second build that has it (cmd/baton/man.go).
TAGS      ?= urfave_cli_no_docs

.PHONY: all build docs demo test check bench bench-deps soak clean install uninstall fleet-deps fleet-rig

all: build

# baton is built without cgo: a static binary starts without the dynamic
# loader and libc, which every new master of a handover pays for (1.1-1.5
# ms of CPU per start), and maps fewer pages. User and group names only
# NSS knows (LDAP, sssd) are asked of getent(1) (supervisor/internal/account).
#
# bin/baton is a copy of the linker's output, as an installed binary is: Go's
# linker writes through a shared mapping, which leaves the file in the page
# cache in 4 KiB pages; a copy (or a file read back from disk) sits in 64 KiB
# folios (ext4, Linux 6.16+), and each exec of it, each new master's, took
# 1.4 ms less CPU here (scripts/zdbench copyBinary). install(1) unlinks first: a running bin/baton is
# replaced, not rewritten.
build:
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/.baton.linked ./cmd/baton
	install -m 0755 $(BIN)/.baton.linked $(BIN)/baton
	rm -f $(BIN)/.baton.linked
	$(GO) build -o $(BIN)/hello ./examples/hello
	@$(MAKE) --no-print-directory docs

# The man page and shell completions, generated from the CLI's own
# definitions: the completions by the binary just built, the man page by
# a build of the same source with urfave/cli's generator (baton-docs,
# removed once it has printed the page).
docs:
	@test -x $(BIN)/baton || { echo "make docs: $(BIN)/baton is missing: run make build (which runs docs)" >&2; exit 2; }
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/baton-docs ./cmd/baton
	$(BIN)/baton-docs man > $(BIN)/baton.1
	rm -f $(BIN)/baton-docs
	$(BIN)/baton completion bash > $(BIN)/baton.bash
	$(BIN)/baton completion zsh > $(BIN)/_baton
	$(BIN)/baton completion fish > $(BIN)/baton.fish

# The example units go to share/baton/systemd, pointing at the baton
# installed here.
install: build
	install -D -m 0755 $(BIN)/baton $(DESTDIR)$(BINDIR)/baton
	install -D -m 0644 $(BIN)/baton.1 $(DESTDIR)$(MANDIR)/man1/baton.1
	install -D -m 0644 $(BIN)/baton.bash $(DESTDIR)$(DATADIR)/bash-completion/completions/baton
	install -D -m 0644 $(BIN)/_baton $(DESTDIR)$(DATADIR)/zsh/site-functions/_baton
	install -D -m 0644 $(BIN)/baton.fish $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/baton.fish
	install -d $(DESTDIR)$(DATADIR)/baton/systemd
	for u in examples/systemd/*.service examples/systemd/*.socket; do \
		sed 's|/usr/local/bin/baton|$(BINDIR)/baton|g' $$u > $(DESTDIR)$(DATADIR)/baton/systemd/$${u##*/} && \
		chmod 0644 $(DESTDIR)$(DATADIR)/baton/systemd/$${u##*/} || exit 1; \
	done
	install -D -m 0755 scripts/deploy.sh $(DESTDIR)$(DATADIR)/baton/deploy.sh

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/baton $(DESTDIR)$(MANDIR)/man1/baton.1 \
		$(DESTDIR)$(DATADIR)/bash-completion/completions/baton \
		$(DESTDIR)$(DATADIR)/zsh/site-functions/_baton \
		$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/baton.fish
	rm -rf $(DESTDIR)$(DATADIR)/baton

# Runs 4 workers of examples/hello on $(DEMO_ADDR) until Ctrl-C; see
# scripts/demo.sh for what to try in another terminal.
demo: build
	@DEMO_ADDR=$(DEMO_ADDR) exec scripts/demo.sh # exec: no shell between make and the script to die of the Ctrl-C

check:
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { gofmt -l $$(git ls-files -co --exclude-standard '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags '$(TAGS)' ./cmd/baton
	@GOOS=darwin $(GO) vet ./... || { echo "GOOS=darwin go vet: a Linux-only file above needs //go:build linux (baton runs on Linux only; see README)"; exit 1; }

# TESTFLAGS=-v lists skipped tests with their reasons (.ci/run does).
test: check
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...

# Phase 6 of the benchmark runs nginx's binary upgrade and Unicorn's USR2
# beside baton when they are installed; this installs them (Debian, as root).
# The package's postinst may start nginx on port 80 where systemd runs; the
# benchmark starts its own on loopback and leaves that one alone.
bench-deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light unicorn

bench:
	$(GO) run ./scripts/zdbench -tags '$(TAGS)' $(BENCHFLAGS)

# SOAK_UPGRADES upgrades back to back of an instant app (examples/hello, 4
# workers) under SOAK_CLIENTS clients of load, then one summary: requests,
# failed by kind, handover percentiles, the keeper's and master's PSS, RSS
# and fds at the start, after a warm-up and at the end. SOAK_STRATEGY is
# baton's --strategy; SOAK_KILL=1 SIGKILLs a random worker after about one
# upgrade in four, and splits the failed requests into those on connections
# the killed workers held and the others (README "Soak"). Every figure also goes to bench-results/soak-STRATEGY.json.
SOAK_UPGRADES ?= 1000
SOAK_STRATEGY ?= shared
SOAK_CLIENTS  ?= 16
soak:
	$(GO) run ./scripts/zdbench -tags '$(TAGS)' -soak $(SOAK_UPGRADES) -soak-strategy $(SOAK_STRATEGY) \
		-concurrency $(SOAK_CLIENTS) $(if $(filter 1,$(SOAK_KILL)),-soak-kill) \
		-json bench-results/soak-$(SOAK_STRATEGY).json

# Debian packages of scripts/fleet and its test (as root): Ansible (with
# community.general), HAProxy, OpenSSH, iproute2. Where systemd runs,
# openssh-server's postinst starts the machine's own sshd on port 22; the
# rig runs its own sshds inside its namespaces and leaves that one alone.
fleet-deps:
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ansible haproxy openssh-server openssh-client iproute2

# A fleet of 3 hosts behind HAProxy on this machine, to try scripts/fleet
# on (as root; Ctrl-C tears it down). See README, Fleet deploys.
fleet-rig:
	$(GO) run ./scripts/fleet/rig up $(RIGFLAGS)

clean:
	rm -rf $(BIN)
