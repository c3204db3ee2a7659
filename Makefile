# The two commands a newcomer runs (see README.md):
#   make quickstart   run a pipeline on the embedded broker and watch it work
#   make test         install what the tests need, then run every test
# Both install their own prerequisites (Debian packages via apt-get when
# missing; Go modules via the Go module proxy).

GO       ?= go
BIN      := bin
# The sandbox's seccomp filter goes through libcontainer's libseccomp
# binding (cgo, libseccomp-dev): every go command here, and the go builds
# tests start, get the tag.
export GOFLAGS += -tags=seccomp

.PHONY: quickstart test deps build generate check-generated lint bench fuzz-smoke

# Every install step lives in .ci/deps.d, one script per concern.
deps:
	@bash .ci/deps

build: deps
	$(GO) build -o $(BIN)/ ./cmd/culvert ./examples/functions/...

quickstart: build
	bash examples/quickstart/run.sh

generate: deps
	$(GO) generate ./...

# Fails when committed generated code differs from what go generate makes.
check-generated: generate
	@git diff --exit-code --stat -- '*.pb.go' pipelines/schema.json 'sdk/python/culvert/v1/*_pb2.py' sdk/node/gen || \
	  (echo "generated code is stale: run 'make generate' and commit the result" >&2; exit 1)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:" $$out >&2; exit 1; fi
	$(GO) vet ./...

# A short run of every fuzz target over its seed corpus plus a few seconds
# of new inputs each.
fuzz-smoke:
	@bash .ci/fuzz-smoke

test: deps lint check-generated
	$(GO) test -race -count=1 -timeout 30m ./...
	@bash .ci/fuzz-smoke

bench: build
	$(GO) run ./bench/framedhop
