# diffuse: build, test, benchmark and demo targets.
CARGO ?= cargo
# Candle re-reads /proc/cpuinfo on every op unless the thread count is given (see src/main.rs).
export RAYON_NUM_THREADS ?= $(shell nproc)
# Release tests: the numeric tests (UNet, sampling chains, statistics) are ~20x faster
# optimised, which outweighs the longer compile.
TEST_PROFILE ?= --release

.PHONY: all build test fmt-check clippy bench demo clean cuda metal features gpu-profiler gpu-bundle

all: build

build:
	$(CARGO) build --release

# The MPI half (tests/distributed.rs, `--features mpi`) needs Open MPI and libclang:
# apt-get install libopenmpi-dev openmpi-bin libclang-dev (.ci/run does). NO_MPI=1 leaves it out
# on a machine without them, and says so.
test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test $(TEST_PROFILE)
ifeq ($(NO_MPI),1)
	@echo "NO_MPI=1: the MPI tests (tests/distributed.rs) were NOT run"
else
	@command -v mpirun >/dev/null && command -v mpicc >/dev/null || { echo "mpirun/mpicc not found: apt-get install libopenmpi-dev openmpi-bin libclang-dev (or make test NO_MPI=1)"; exit 1; }
	$(CARGO) clippy --all-targets --features mpi -- -D warnings
	$(CARGO) test $(TEST_PROFILE) --features mpi --test distributed
endif

# The CUDA build (target/cuda/release/diffuse) on any machine: a system toolkit if found, else
# CUDA 13.0 from PyPI wheels into .cuda/; no GPU or driver needed to build. FEATURES=cudnn adds
# cuDNN; CUDA_COMPUTE_CAP (default 90) the architecture. See scripts/cuda-build.sh.
cuda:
	./scripts/cuda-build.sh

# The kernel profiler the GPU check injects (scripts/kprof.cpp): gpu/libkprof.so beside CUPTI
# 13.0's library (from the nvidia-cuda-cupti wheel, into .cuda/ like the toolkit).
CUPTI := .cuda/cupti/nvidia/cu13
gpu-profiler:
	@test -f $(CUPTI)/include/cupti.h || python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .cuda/cupti nvidia-cuda-cupti==13.0.85
	@test -f .cuda/nvidia/cu13/include/cuda.h || TOOLKIT_ONLY=1 ./scripts/cuda-build.sh
	mkdir -p gpu
	g++ -O2 -shared -fPIC -o gpu/libkprof.so scripts/kprof.cpp -I$(CUPTI)/include \
	  -I.cuda/nvidia/cu13/include -L$(CUPTI)/lib -l:libcupti.so.13 -Wl,-rpath,'$$ORIGIN'
	cp $(CUPTI)/lib/libcupti.so.13 gpu/

# Everything the GPU check runs, packed for one device call: gpu/bundle.tar.xz (the CUDA, cuDNN
# and NCCL builds and the device test) and the profiler. See scripts/gpu-bundle.sh.
gpu-bundle:
	./scripts/gpu-bundle.sh

# Metal (macOS only; cannot be built on this Linux machine).
metal:
	$(CARGO) build --release --features metal

# Benchmarks print medians over repeats and ratios against bounds measured in the same run.
# PEER_PYTHON=/path/to/venv/bin/python (torch + diffusers) adds PyTorch measured side by side.
bench: build
	$(CARGO) bench --bench core -- $(BENCH_ARGS)
	$(CARGO) bench --bench data
	$(CARGO) bench --bench sampler
	$(CARGO) bench --bench kernels
	$(CARGO) bench --bench unet -- $(BENCH_ARGS)
	./benches/sample.sh
	./benches/distributed.sh

# The main job, end to end, on the bundled data (about 15 minutes on 2 CPU cores).
demo: build
	mkdir -p out
	./target/release/diffuse schedule --compare linear,scaled-linear,cosine,sigmoid,quadratic -o out/schedules.png
	./target/release/diffuse noise data/sample.png --panels 6 -o out/forward_strip.png --gif out/forward.gif --seed 0
	./target/release/diffuse train --dataset mnist -o out/mnist --force
	./target/release/diffuse sample --model out/mnist --sampler ddim --steps 50 -o out/samples.png --gif out/trajectory.gif
	@echo "demo outputs in out/"

# The feature networks `diffuse eval` ships (assets/features/, built into the binary): about
# three minutes each on 2 CPU cores. Fashion-MNIST: apt-get install dataset-fashion-mnist.
features: build
	./target/release/diffuse eval --train-features --dataset mnist -o assets/features/mnist.safetensors
	./target/release/diffuse eval --train-features --dataset fashion-mnist -o assets/features/fashion-mnist.safetensors

clean:
	$(CARGO) clean
