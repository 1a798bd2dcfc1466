# mpspawn — build, demo and test. `make demo` and `make test` are the two
# commands the README gives for a fresh machine.

GO       ?= go
BIN      := bin/mpspawn
PYTHON   ?= python3
STATICCHECK_VERSION := v0.8.2

.PHONY: build demo test test-deps check bench clean install wheel

# go-nvml's cgo code calls every NVML function, the deprecated ones too, and
# gcc warns about each (about 150 lines of -Wdeprecated-declarations on a
# cold build). A dependency's #cgo flags cannot be changed from here, so
# the warning is turned off for the cgo compiles this Makefile runs; the
# default CGO_CFLAGS ("-O2 -g") are kept, or yours when you set them.
CGO_CFLAGS ?= -O2 -g
export CGO_CFLAGS += -Wno-deprecated-declarations

# The commit, for mpspawn --version when the build has no VCS stamp.
COMMIT   := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS  := -X main.buildCommit=$(COMMIT)

# urfave_cli_no_docs drops urfave/cli's man-page generator, whose markdown
# library costs 1.4 ms of package init at every start.
build:
	@$(GO) build -tags urfave_cli_no_docs -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mpspawn

# mpspawn on PATH, and its man page in ../share/man/man1 beside that bin
# directory, where man finds it from PATH alone.
GOBIN    ?= $(shell $(GO) env GOBIN)
ifeq ($(GOBIN),)
GOBIN    := $(shell $(GO) env GOPATH)/bin
endif
install:
	GOBIN=$(GOBIN) $(GO) install -tags urfave_cli_no_docs -ldflags '$(LDFLAGS)' ./cmd/mpspawn
	@mkdir -p $(GOBIN)/../share/man/man1
	$(GOBIN)/mpspawn man > $(GOBIN)/../share/man/man1/mpspawn.1

# dist/mpspawn-<version>-py3-none-<platform>.whl: the binary (installed as
# bin/mpspawn of the environment) and the Python package mpspawn
# (mpspawn.ipc, python -m mpspawn). Standard library only, no download.
DIST     ?= dist
wheel: build
	@$(PYTHON) scripts/build_wheel.py --binary $(BIN) --out $(DIST)

# The main job: 4 ranks on CPU fallback, no torch needed.
demo: build
	$(BIN) --standalone --nproc-per-node 4 --python $(PYTHON) examples/python/hello_ranks.py

# Everything the tests need (scripts/install-test-deps.sh: torch, etcd, a
# SLURM cluster's packages), then every test under the race detector. The
# CLI's package, with its real DDP, multi-node and SLURM jobs, takes about
# 15 minutes on 2 cores; the bound leaves room for a slower machine.
# internal/testsum prints a line per finished package, every failure as it
# happens, a progress line at least every 30 s, and the skipped tests with
# their reasons at the end; it exits with go test's code.
test: test-deps
	$(GO) run ./internal/testsum -race -count=1 -timeout 40m ./...

test-deps:
	scripts/install-test-deps.sh

# Static checks CI runs before the tests. Linux is the target; the other
# platforms must still build (and vet: their _other.go files and tests).
check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	GOOS=windows CGO_ENABLED=0 $(GO) build ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) mod tidy -diff

bench: build
	$(GO) build -o bin/gobench ./bench/gobench
	$(PYTHON) bench/launch.py --mpspawn $(BIN)
	$(PYTHON) bench/goapi.py --gobench bin/gobench
	$(PYTHON) bench/ipc.py --gobench bin/gobench
	$(PYTHON) bench/forkserver.py --mpspawn $(BIN)

clean:
	rm -rf bin dist
