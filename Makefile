# Two commands for a newcomer: `make demo` (whole pipeline on the embedded corpus, then the dashboard)
# and `make test`. Both create .venv and install requirements.txt first.
# `make bench` (QUICK=1 for the small sizes, BENCHES="train generate" for some) measures against llama2.c.
PY         := .venv/bin/python
DASH       ?= 1
PORT       ?= 8050
DEMO_RUN   ?= out/demo

.PHONY: demo test bench setup

.venv/.installed: requirements.txt
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

setup: .venv/.installed

demo: setup
	$(PY) download/download_datasets.py storyworld
	$(PY) tokenization/pretokenize.py train_vocab --dataset storyworld --vocab_size 512
	$(PY) tokenization/pretokenize.py pretokenize --dataset storyworld --vocab_size 512
	$(PY) metadata/batch_metadata.py compute_metadata --dataset storyworld --vocab_size 512
	$(PY) modelling/train.py --out_dir=$(DEMO_RUN)
	$(PY) eval.py --out_dir $(DEMO_RUN)
	$(PY) visualize_attn.py --out_dir $(DEMO_RUN)
	$(PY) visualize_embd.py --out_dir $(DEMO_RUN)
	$(PY) visualize_sat_curves.py --out_dir $(DEMO_RUN)
ifeq ($(DASH),0)
	@echo "pipeline done; browse it with: $(PY) dash_llama/app.py --out out --port $(PORT)"
else
	$(PY) dash_llama/app.py --out out --host 127.0.0.1 --port $(PORT)
endif

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench.run_all $(if $(QUICK),--quick) $(BENCHES)
