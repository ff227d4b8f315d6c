GO        ?= go
BIN       := bin
DEMO_ADDR ?= 127.0.0.1:8080

.PHONY: all build demo test check bench fuzz clean fleet-deps fleet-rig

all: build

build:
	$(GO) build -o $(BIN)/baton ./cmd/baton
	$(GO) build -o $(BIN)/hello ./examples/hello

# Runs 4 workers of examples/hello on $(DEMO_ADDR) until Ctrl-C; see
# scripts/demo.sh for what to try in another terminal.
demo: build
	DEMO_ADDR=$(DEMO_ADDR) scripts/demo.sh

check:
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { gofmt -l $$(git ls-files -co --exclude-standard '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

test: check
	$(GO) test -race -count=1 -timeout 20m ./...

bench:
	$(GO) run ./scripts/zdbench $(BENCHFLAGS)

# Debian packages of scripts/fleet and its test (as root): Ansible (with
# community.general), HAProxy, OpenSSH, iproute2.
fleet-deps:
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ansible haproxy openssh-server openssh-client iproute2

# A fleet of 3 hosts behind HAProxy on this machine, to try scripts/fleet
# on (as root; Ctrl-C tears it down). See README, Fleet deploys.
fleet-rig:
	$(GO) run ./scripts/fleet/rig up $(RIGFLAGS)

clean:
	rm -rf $(BIN)
