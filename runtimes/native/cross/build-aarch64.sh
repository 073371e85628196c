#!/usr/bin/env bash
# Cross-build the native runtime for aarch64 (Jetson / Raspberry Pi class boards) into
# build/native-aarch64/ from the repo root, with Debian's gcc-aarch64-linux-gnu, and write qemu
# wrappers so the x86 machine runs the result (tests/test_native_aarch64.py drives them).
#
#   runtimes/native/cross/build-aarch64.sh     install missing Debian packages (arm64 ones through
#                                              multiarch), fetch the aarch64 onnxruntime wheel, build
#   NO_APT=1 ...   never call apt-get        JOBS=N ...   parallel compiles (default 2)
#   ORT_VERSION=1.32.0 ...   the onnxruntime wheel to fetch (default: the one installed here; the qemu
#                            tests use 1.22.1: 1.32's aarch64 library spins at start-up under Debian 12's qemu 7.2)
#
# ONNX Runtime is dlopen'ed at run time: the aarch64 wheel's capi/libonnxruntime.so.* is unpacked
# into build/native-aarch64/third_party (pip download from PyPI, nothing installed). OpenVINO is
# left out of this build (the library says so when an openvino variant is asked for).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
native="$(cd "$here/.." && pwd)"
root="$(cd "$native/../.." && pwd)"
build="${BUILD_DIR:-$root/build/native-aarch64}"
third="$build/third_party"
mkdir -p "$build" "$third"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
debian_major="$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo 0)"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need_pkgs=()
for p in cmake make pkg-config nlohmann-json3-dev gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user \
  libjpeg62-turbo-dev:arm64 libpng-dev:arm64 libwebp-dev:arm64 libgif-dev:arm64 libpcre2-dev:arm64 \
  libutf8proc-dev:arm64 ca-certificates python3; do
  installed "$p" || need_pkgs+=("$p")
done
ort_include=""
if [ "$debian_major" -ge 13 ] 2>/dev/null; then
  installed libonnxruntime-dev || need_pkgs+=(libonnxruntime-dev)
  ort_include=/usr/include/onnxruntime
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ -n "${NO_APT:-}" ]; then
    echo "build-aarch64.sh: missing Debian packages: ${need_pkgs[*]} (NO_APT is set)" >&2
    exit 2
  fi
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "build-aarch64.sh: dpkg --add-architecture arm64 (multiarch: the arm64 -dev packages)"
    $SUDO dpkg --add-architecture arm64
  fi
  echo "build-aarch64.sh: installing ${need_pkgs[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${need_pkgs[@]}" >/dev/null
fi

if [ -z "$ort_include" ]; then
  # Debian 12: the C API header (architecture independent) from trixie's libonnxruntime-dev, fetched
  # by debian13_ort_headers.sh as build.sh does (a private apt state, the system's sources and pins
  # untouched); build.sh's copy is reused when it is there
  ort_include="$third/onnxruntime/usr/include/onnxruntime"
  host_copy="$root/build/native/third_party/onnxruntime/usr/include/onnxruntime"
  if [ ! -f "$ort_include/onnxruntime_c_api.h" ] && [ -f "$host_copy/onnxruntime_c_api.h" ]; then
    ort_include="$host_copy"
  elif [ ! -f "$ort_include/onnxruntime_c_api.h" ]; then
    source "$native/debian13_ort_headers.sh"
    debian13_ort_headers "$third" build-aarch64.sh
  fi
fi

# The aarch64 onnxruntime wheel (manylinux, glibc >= 2.28: JetPack 5/6, Raspberry Pi OS 12),
# the same version as the x86 one the Python runtime uses here, so parity compares like with like.
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
ort_version="${ORT_VERSION:-$("$py" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)}"
if [ -z "$ort_version" ]; then
  echo "build-aarch64.sh: onnxruntime is not installed here: set ORT_VERSION (e.g. ORT_VERSION=1.32.0)" >&2
  exit 2
fi
ort_dir="$third/onnxruntime-aarch64-$ort_version"
if ! ls "$ort_dir"/libonnxruntime.so.* >/dev/null 2>&1; then
  wheels="$third/wheels"
  mkdir -p "$wheels"
  if ! ls "$wheels"/onnxruntime-"$ort_version"-*aarch64.whl >/dev/null 2>&1; then
    echo "build-aarch64.sh: pip download onnxruntime==$ort_version (aarch64 wheel)"
    pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
      -d "$wheels" "onnxruntime==$ort_version"
  fi
  whl="$(ls "$wheels"/onnxruntime-"$ort_version"-*aarch64.whl | head -1)"
  mkdir -p "$ort_dir"
  "$py" - "$whl" "$ort_dir" <<'PY'
import os, sys, zipfile
whl, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not libs:
        raise SystemExit(f"{whl} has no onnxruntime/capi/libonnxruntime.so*")
    for n in libs:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            dst.write(src.read())
PY
fi
ort_lib="$(ls "$ort_dir"/libonnxruntime.so.* | sort | tail -1)"

cmake_args=(-S "$native" -B "$build" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}"
  -DCMAKE_TOOLCHAIN_FILE="$here/aarch64-linux-gnu.cmake"
  -DMMRT_ORT_INCLUDE_DIR="$ort_include" -DMMRT_DEFAULT_ORT_LIBRARY="$ort_lib"
  -DMMRT_OV_INCLUDE_DIR="" -DMMRT_DEFAULT_OV_LIBRARY="" -DMMRT_SANITIZE=0
  -DCMAKE_INSTALL_PREFIX="${PREFIX:-$build/install}")
if [ ! -f "$build/CMakeCache.txt" ] || [ "$native/CMakeLists.txt" -nt "$build/CMakeCache.txt" ] ||
  [ "$here/aarch64-linux-gnu.cmake" -nt "$build/CMakeCache.txt" ] ||
  ! grep -q "MMRT_DEFAULT_ORT_LIBRARY:STRING=$ort_lib\$" "$build/CMakeCache.txt"; then
  cmake "${cmake_args[@]}" >/dev/null
fi
cmake --build "$build" -j "${JOBS:-2}"

# qemu wrappers: the x86 machine runs build/native-aarch64/<program> as build/native-aarch64/qemu/<program>.
# The arm64 loader and libraries are the multiarch ones (/lib/ld-linux-aarch64.so.1, /usr/lib/aarch64-linux-gnu;
# libstdc++ from /usr/aarch64-linux-gnu/lib). qemu-user 7.2 passes the host's x86 /proc/cpuinfo through,
# and ONNX Runtime's cpuinfo crashes on it: -L points at a root whose proc/cpuinfo describes Cortex-A72
# cores (qemu reads a path there first, else the host's).
mkdir -p "$build/qemu/sysroot/proc"
: >"$build/qemu/sysroot/proc/cpuinfo"
for i in $(seq 0 $(($(nproc --all) - 1))); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' \
    "$i" >>"$build/qemu/sysroot/proc/cpuinfo"
done
for prog in mmrt mmrt_preprocess tokenize_main c_api_hostile c_api_threads c_api_generate; do
  [ -x "$build/$prog" ] || continue
  printf '#!/bin/sh\nexec qemu-aarch64 -L "%s" -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib "%s" "$@"\n' \
    "$build/qemu/sysroot" "$build/$prog" >"$build/qemu/$prog"
  chmod +x "$build/qemu/$prog"
done

echo "mmrt (aarch64):    $build/mmrt"
echo "library (aarch64): $build/libmmdeploy_runtime.so"
echo "onnxruntime (aarch64, dlopen default): $ort_lib"
echo "openvino: left out of the aarch64 build"
echo "on this machine, under qemu: $build/qemu/mmrt info BUNDLE"
