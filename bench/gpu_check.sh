#!/usr/bin/env bash
# GPU check (issues 8 and 20): full-size SD1.5 (512x512) and SDXL (1024x1024) random-weight models built on the
# device, fp16 (--dtype bf16 for bf16), 20 steps: per CFG step eager vs compiled (inductor, CUDA graphs) vs diffusers
# with the first compile's cost and max |compiled - eager|; txt2img through the engine eager and with --compile vs
# the diffusers pipeline (it/s, first prompt, peak VRAM); VAE decode in fp16/bf16/fp32 at 1024 (time, overflow);
# SDPA / channels_last; then SD1.5 1024 and SDXL 512 eager. Most important first; a budget skips what would not
# fit in 10 minutes on one H100 or H200, and every figure is printed as soon as it is measured.
# Never part of CI. Run from the repository root:
#   bash bench/gpu_check.sh                 on the GPU machine (only PyTorch needed there; see wheels below)
#   bash bench/gpu_check.sh --dry-run       anywhere: CPU, tiny models, 2 steps, to check the logic (add --compile
#                                           to compile there too: a few minutes on a small CPU)
#   bash bench/gpu_check.sh --fetch-wheels  here, before the GPU run: downloads what the GPU image lacks into .whl/
# The GPU image has torch, transformers, safetensors, numpy, pillow, networkx, aiohttp, tqdm, pyyaml but not
# diffusers or pydantic; they travel as wheels in .whl/ (ignored by git: echo /.whl/ >> .git/info/exclude) and are
# installed into /tmp/site at the start of the run. Output goes to stdout and, where $OUT is set, $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p .whl
    for spec in diffusers==0.42.1 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
                typing-inspection==0.4.2 importlib-metadata==10.2.0 zipp==4.1.2; do
        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$spec"
    done
    exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
python3 -c "import torch, diffusers, pydantic; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
log="${OUT:-/tmp}/gpu_check.log"
timeout 570 python3 bench/gpu_check.py --budget 500 "$@" 2>&1 | tee "$log"
