#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, as one prepared run.
#
# The GPU image has jax, flax, optax, orbax-checkpoint, einops, numpy and torch
# but no tensorflow, tfds, grain, ml_collections or tensorboardX, and no network. So:
#
#   here (with network):   bash benchmarks/gpu_check.sh fetch
#       downloads the missing wheels into .whl/ (git-ignored; the set that trains
#       av_digits in a venv holding only the image's packages, tensorflow absent) and,
#       if av_digits is built, copies its ArrayRecord files to .gpu_data/ (read by
#       index without tensorflow);
#   there (carry .whl and .gpu_data):   bash benchmarks/gpu_check.sh run OUT_DIR
#       bench fusion in bf16 and f32, bench train in bf16 at GPU batch sizes,
#       and, with av_digits in .gpu_data, a real av_digits training run.
#
# Every step writes under OUT_DIR and a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
fetch)
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any -d .whl \
    "ml_collections>=1.1.0" "tensorboardX>=2.6" "tensorflow-datasets>=4.9.10" "grain>=0.2.18" \
    "array-record>=0.8.6" dm-tree immutabledict simple_parsing docstring-parser tensorflow-metadata \
    termcolor toml wrapt pillow tqdm requests urllib3 idna certifi charset-normalizer cloudpickle \
    googleapis-common-protos PyYAML six portpicker
  python3 -m pip wheel -q --no-deps -w .whl promise  # tfds needs it; PyPI has only its source
  data_dir="${MMJAX_DATA_DIR:-$HOME/tensorflow_datasets}"
  if [ -f "$data_dir/av_digits/full/1.0.0/dataset_info.json" ]; then
    mkdir -p .gpu_data/av_digits/full
    rm -rf .gpu_data/av_digits/full/1.0.0
    cp -r "$data_dir/av_digits/full/1.0.0" .gpu_data/av_digits/full/
    rm -f .gpu_data/av_digits/full/1.0.0/*.tfrecord-*  # only the ArrayRecord files travel
  else
    echo "av_digits is not built here (python -m experiments data build av_digits): no training run on the GPU"
  fi
  ;;
run)
  out="${2:?usage: gpu_check.sh run OUT_DIR}"
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  step() {  # step NAME CMD...: runs CMD, its log in OUT_DIR/NAME.log, its status in OUT_DIR/status.txt
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    echo "$name rc=$? $((SECONDS - t0))s" | tee -a "$out/status.txt"
  }
  step env sh -c 'nvidia-smi; python3 -c "import jax, flax, torch; print(jax.devices(), jax.__version__, flax.__version__, torch.__version__)"'
  step fusion_bf16 python3 -m experiments bench fusion --quick --dtype bfloat16 --torch-compile --out "$out/fusion_bf16"
  step fusion_f32 python3 -m experiments bench fusion --quick --out "$out/fusion_f32" --no-plots
  step train_bf16 python3 -m experiments bench train --dtype bfloat16 --batch-size 256 --out "$out/train_bf16"
  if [ -d .gpu_data ]; then
    step train_av_digits python3 -m experiments train av_digits --workdir "$out/av_digits" \
      --config.data.data_dir=.gpu_data --config.model.dtype=bfloat16
  fi
  ;;
*)
  echo "usage: bash benchmarks/gpu_check.sh fetch | run OUT_DIR" >&2
  exit 2
  ;;
esac
