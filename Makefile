GO        ?= go
BIN       := bin
DEMO_ADDR ?= 127.0.0.1:8080

.PHONY: all build demo test check bench fuzz clean

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

# TESTFLAGS=-v lists skipped tests with their reasons (.ci/run does).
test: check
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...

bench:
	$(GO) run ./scripts/zdbench $(BENCHFLAGS)

clean:
	rm -rf $(BIN)
