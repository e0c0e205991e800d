#!/usr/bin/env bash
# Installs what moetool needs to build and test on Debian 12 (run as root).
# usage: tools/install-deps.sh [--all]
#   --all  also the heavy independent checkers of the test suite: Debian's
#          python3-torch with transformers (about 1 GB), and chromium to
#          render recipe reports (tests/cli_report_html.sh). CI uses it.
# Build: cmake, a C compiler, OpenBLAS, jansson; OpenMPI for data-parallel
# distill (optional at build time; tests/cli_distill_mpi.sh runs two local
# ranks); tests: CMocka; fuzzing: clang with its libFuzzer runtime;
# independent checks: numpy and the `gguf` reader.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config clang libclang-rt-dev \
  libopenblas-dev libzstd-dev libarchive-dev libyaml-dev libcmocka-dev libjansson-dev \
  libopenmpi-dev openmpi-bin python3 python3-pip strace time zstd >/dev/null
# numpy: the independent numpy forward used by tests; gguf: llama.cpp's own
# GGUF reader. Tests that need them skip (exit 77) when they are missing.
python3 -m pip install -q numpy gguf 2>/dev/null \
  || python3 -m pip install -q --break-system-packages numpy gguf \
  || echo "install-deps: warning: pip install of numpy/gguf failed; python checks will be skipped" >&2
[ "${1:-}" = "--all" ] || exit 0

# transformers on Debian's torch (python3-torch 1.13; transformers 4.40.2 is
# a release that accepts it), for /usr/bin/python3: tests/cli_transformers.sh
# loads moetool's Hugging Face outputs with it and compares perplexity and
# logits; tests/cli_seq2seq.sh writes Switch Transformers checkpoints with it
# and compares the encoder-decoder runtime; sentencepiece (with transformers'
# tokenizers) is the reference of tests/cli_tokenize_unigram.sh for T5's
# unigram tokenizer. Skipped by the tests when missing.
apt-get install -y -qq --no-install-recommends python3-torch >/dev/null \
  && /usr/bin/python3 -m pip install -q --break-system-packages "transformers==4.40.2" sentencepiece 2>/dev/null \
  || echo "install-deps: warning: torch/transformers not installed; cli_transformers will be skipped" >&2

# chromium: tests/cli_report_html.sh renders a recipe's report.html headless.
apt-get install -y -qq --no-install-recommends chromium >/dev/null \
  || echo "install-deps: warning: chromium not installed; cli_report_html will be skipped" >&2
