#!/usr/bin/env bash
# Gateway overhead against direct access, the Rust vllm-router and nginx (the floor of one
# proxy hop), all in the same run, with the servers and the load generator pinned to
# separate cores. Uses the team's shared peer harness (../shared/bench-peers; override
# with PEERBENCH_HARNESS). Results: bench/results/gateway-overhead.{md,json}.
#
#   bench/gateway_overhead.sh                 # a,c,d scenarios, 3 reps (~7 min)
#   bench/gateway_overhead.sh --quick         # smoke test
#   bench/gateway_overhead.sh --scenarios d   # any bench.py option
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${PEERBENCH_HARNESS:-$REPO/../shared/bench-peers}"
if [ ! -x "$HARNESS/run.sh" ]; then
  echo "the peer harness is not at $HARNESS (set PEERBENCH_HARNESS)" >&2
  exit 2
fi
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || { echo "run 'make install' first ($PY missing)" >&2; exit 2; }
VERSION="$("$PY" -c 'from importlib.metadata import version; print(version("sage-unified-gateway"))')"
args=("$@")
has_scenarios=0
for a in "${args[@]+"${args[@]}"}"; do [ "$a" = "--scenarios" ] && has_scenarios=1; done
[ "$has_scenarios" = 1 ] || args+=(--scenarios a,c,d)
exec "$HARNESS/run.sh" \
  --peers vllm-router \
  --gateway "sage=env SAGE_HOME={WORK}/sage-home $PY -m sage.unified.cli gateway run --port {PORT} --backend {UPSTREAM} --log-level error" \
  --gateway "nginx=bash {HERE}/nginx_gw.sh {PORT} {UPSTREAM} {WORK}" \
  --gateway-version "sage=$VERSION" \
  --out "$REPO/bench/results/gateway-overhead.md" \
  "${args[@]}"
