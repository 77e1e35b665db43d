# Thin convenience layer over CMake (the canonical build). Each target runs CMake/CTest commands.
BUILD    ?= build
SANBUILD ?= build-sanitize
TSANBUILD ?= build-tsan
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all build deps test test-release test-sanitize test-tsan demo bench clean

all: build

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Every test: the optimised build, then the whole suite again under ASan + UBSan, then the
# threaded tests under TSan. Open MPI (for ring attention and its tests) is installed if missing.
test: deps test-release test-sanitize test-tsan

# Open MPI from the Debian archive: ring/ and its tests are built only where it is found.
deps:
	@command -v mpicc >/dev/null 2>&1 || { echo "installing Open MPI (openmpi-bin libopenmpi-dev)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev; }

test-release: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-sanitize:
	cmake -S . -B $(SANBUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=address -DATTN_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(SANBUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(SANBUILD) --output-on-failure -j $(JOBS)

test-tsan:
	cmake -S . -B $(TSANBUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=thread -DATTN_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(TSANBUILD) -j $(JOBS) --target test_determinism test_rules test_api test_backward test_merge
	TSAN_OPTIONS=halt_on_error=1 ctest --test-dir $(TSANBUILD) --output-on-failure -j $(JOBS) -R '^(determinism|rules|api|backward_threads|merge)$$'

# The main job: the three kinds of attention, one example each, and a model trained with attn_backward.
demo: build
	@for ex in bidirectional causal cross train; do echo "== examples/$$ex.c"; ./$(BUILD)/example_$$ex || exit 1; echo; done

# Speed: attn's own table (% of the FMA peak measured in the same run), then the same shapes
# through PyTorch SDPA and numpy (installed into .venv-bench on first use; benchmark-only).
bench: build
	./$(BUILD)/attn bench
	python3 bench/peers.py
	./$(BUILD)/attn bench --backward
	python3 bench/peers.py --backward

clean:
	rm -rf $(BUILD) $(SANBUILD) $(TSANBUILD)
