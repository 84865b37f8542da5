# One entry point for setup, tests, benchmarks and the demo. Everything runs inside .venv.
PY := .venv/bin/python

.PHONY: setup test bench demo quickstart
setup:
	./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/models.py && $(PY) bench/pipeline.py && $(PY) bench/train.py && $(PY) bench/sample.py && $(PY) bench/audit.py

demo: setup
	$(PY) pipeline/build_shards.py --demo --random-weights --output out/demo

quickstart: setup
	$(PY) scripts/quickstart.py
