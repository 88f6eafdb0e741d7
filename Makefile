# The two set-up commands of the README: `make demo` and `make test`.
# Each creates/updates the virtualenv at .venv and installs kdtrack into it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdtrack-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test bench clean cluster-up cluster-down

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# HOTA: trackeval without its opencv-python pin (the headless build provides cv2).
	$(PY) -m pip install --quiet --no-deps trackeval==1.3.0
	# A dependency that pulled the GUI OpenCV build would shadow the headless one.
	! $(PY) -m pip show --quiet opencv-python 2>/dev/null || \
	  ($(PY) -m pip uninstall --quiet -y opencv-python && \
	   $(PY) -m pip install --quiet --force-reinstall --no-deps opencv-python-headless)
	$(PY) -c "import torch, torchvision, ray, mlflow, cv2, trackeval, motmetrics, lap"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# A local Ray head for `ray job submit` (token auth, dashboard on 127.0.0.1:8265); cluster-down stops only it.
cluster-up: $(STAMP)
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

clean:
	rm -rf $(VENV) runs .pytest_cache
