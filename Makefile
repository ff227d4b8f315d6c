GO        ?= go
BIN       := bin
DEMO_ADDR ?= 127.0.0.1:8080

.PHONY: all build demo test check bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/baton ./cmd/baton
	$(GO) build -o $(BIN)/hello ./examples/hello

# Runs 4 workers of examples/hello on $(DEMO_ADDR). In another terminal:
#   curl $(DEMO_ADDR)/ ; kill -USR2 $$(cat $(BIN)/baton.pid) ; Ctrl-C to stop.
demo: build
	@echo "baton: serving on http://$(DEMO_ADDR)/  (reload: kill -USR2 \$$(cat $(BIN)/baton.pid); stop: Ctrl-C)"
	$(BIN)/baton run --listen http=$(DEMO_ADDR) --workers 4 --pid-file $(BIN)/baton.pid -- $(BIN)/hello

check:
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { gofmt -l $$(git ls-files -co --exclude-standard '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

test: check
	$(GO) test -race -count=1 -timeout 20m ./...

bench:
	$(GO) run ./scripts/zdbench $(BENCHFLAGS)

clean:
	rm -rf $(BIN)
