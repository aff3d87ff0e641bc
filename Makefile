# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
ENV := HF_HUB_OFFLINE=1
TEST_ENV := $(ENV) WANDB_MODE=disabled
TABLE ?= synthetic_mini
# Test processes (pytest-xdist): one per core; ARGS="-n 0" runs the suite serially (e.g. under a debugger).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_PAR = -n $(TEST_WORKERS) --dist worksteal
ARGS ?=

.PHONY: install run test test-fast sweep aggregate evidence bench bench-gpu bench-loader bench-tango pretrain calibrate clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned, so that no later resolution can pull a second multi-GB torch build.
$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(ENV) $(BIN)/python -m noisy_prompt.run $(ARGS)

test: install
	@$(TEST_ENV) $(BIN)/pytest -q $(PYTEST_PAR) $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; exit 1; fi; exit $$rc

test-fast: install
	$(TEST_ENV) $(BIN)/pytest -q $(PYTEST_PAR) -m "not slow" $(ARGS)

LOGS = $${NOISY_PROMPT_LOGS:-$$HOME/noisy_prompt/runs}

# Runs every cell of sweeps/$(TABLE).yaml (finished cells are skipped), then prints the table.
sweep: install
	@$(ENV) $(BIN)/python -m noisy_prompt.sweep $(TABLE) $(ARGS); rc=$$?; \
	$(BIN)/python -m noisy_prompt.aggregate $(LOGS)/$(TABLE) --table $(TABLE); exit $$rc

aggregate: install
	$(BIN)/python -m noisy_prompt.aggregate $(LOGS)/$(TABLE) --table $(TABLE) $(ARGS)

# Rewrites every table of evidence/README.md and redraws evidence/figures/ from the committed run records.
evidence: install
	$(BIN)/python -m noisy_prompt.reporting.evidence $(ARGS)

# CPU: DP-SEP step time/memory of the dassl, cut and prefix text paths (takes ~30 min on 2 busy cores).
bench: install
	$(ENV) $(BIN)/python -m noisy_prompt.bench prompt $(ARGS)

# One GPU, under 5 minutes: prompt paths in 16-mixed/bf16, TANGO images/s + MFU, k-NN at 50k, Table 1 GPU-hours.
bench-gpu: install
	$(ENV) $(BIN)/python -m noisy_prompt.bench gpu $(ARGS)

# CPU: images/s of the training loader on a generated JPEG tree against this machine's decode limit (docs/speed.md).
bench-loader: install
	$(ENV) $(BIN)/python -m noisy_prompt.bench loader $(ARGS)

# CPU: TANGO's epoch against a plain CE fine-tuning epoch on ViT-B/16 (random weights), purification at N = 50,000.
bench-tango: install
	$(ENV) $(BIN)/python -m noisy_prompt.bench tango $(ARGS)

# Rebuilds the built-in tiny CLIP of world 3 from its seed, on one thread (bit-for-bit; about 3.5 h of CPU) into
# noisy_prompt/synthetic/weights/synthetic-clip-v3/; its resume checkpoint (every 100 steps) lies under the cache
# dir until the run ends, so an interrupted `make pretrain` continues where it stopped.
# ARGS="--preset synthetic-clip-v2 --checkpoint-dir DIR" rebuilds world 2's weights.
PRETRAIN_CKPT = $${NOISY_PROMPT_CACHE:-$$HOME/.cache/noisy_prompt}/pretrain
pretrain: install
	$(ENV) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m noisy_prompt.tools.pretrain \
		--checkpoint-dir $(PRETRAIN_CKPT)/synthetic-clip-v3 $(ARGS)

# Targets T1-T10 of the synthetic world (docs/synthetic-world.md): runs sweeps/calibration.yaml (finished cells
# are reused), then checks the records and prints the targets and the per-seed rows; ARGS=--quick for one seed,
# ARGS="--jobs 2" for two sweep processes, ARGS="--check-only DIR" to check existing records only.
calibrate: install
	$(TEST_ENV) $(BIN)/python -m noisy_prompt.tools.calibrate $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info
