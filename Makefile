# Two commands for a newcomer: `make demo` (whole pipeline on the embedded corpus, then the dashboard)
# and `make test`. Both create .venv and install requirements.txt first. The demo runs exactly the published
# commands, each with no arguments: the defaults are the embedded corpus (storyworld), vocab 512 and the run
# out/demo.
# `make bench` (QUICK=1 for the small sizes, BENCHES="train generate" for some) measures against llama2.c.
PY         := .venv/bin/python
DASH       ?= 1
PORT       ?= 8050

.PHONY: demo test test-fast bench setup

.venv/.installed: requirements.txt
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

setup: .venv/.installed

demo: setup
	$(PY) download/download_datasets.py storyworld
	$(PY) tokenization/pretokenize.py train_vocab
	$(PY) tokenization/pretokenize.py pretokenize
	$(PY) metadata/batch_metadata.py compute_metadata
	$(PY) modelling/train.py
	$(PY) eval.py
	$(PY) visualize_attn.py
	$(PY) visualize_embd.py
	$(PY) visualize_sat_curves.py
ifeq ($(DASH),0)
	@echo "pipeline done; browse it with: $(PY) dash_llama/app.py"
else
	$(PY) dash_llama/app.py --port $(PORT)
endif

# everything, the 15 slowest tests listed at the end
test: setup
	$(PY) -m pytest -q --durations=15 tests

# the edit loop: skips the tests marked slow (training-based direction tests, experiment smoke runs)
test-fast: setup
	$(PY) -m pytest -q --durations=15 -m "not slow" tests

bench: setup
	$(PY) -m bench.run_all $(if $(QUICK),--quick) $(BENCHES)
