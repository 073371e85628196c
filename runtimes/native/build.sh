#!/usr/bin/env bash
# Build the native runtime (libmmdeploy_runtime + mmrt) into build/native/ from the repo root.
#
#   runtimes/native/build.sh            install missing Debian build deps, configure, build
#   BUILD_TYPE=Debug SANITIZE=1 ...     an ASan/UBSan build (CI job)
#   NO_APT=1 ...                        never call apt-get (deps already there)
#
# ONNX Runtime is loaded at run time with dlopen; only its C API header is needed here. Debian 13
# ships it (libonnxruntime-dev); on Debian 12 that package is fetched from trixie by name into a
# private apt state under build/native/third_party and only its headers are extracted.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${BUILD_DIR:-$root/build/native}"
third="$build/third_party"
mkdir -p "$build" "$third"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need_pkgs=()
for p in cmake g++ pkg-config nlohmann-json3-dev libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev \
  libpcre2-dev libutf8proc-dev ca-certificates; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
debian_major="$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo 0)"
ort_include=""
if [ "$debian_major" -ge 13 ] 2>/dev/null; then
  dpkg-query -W -f='${Status}' libonnxruntime-dev 2>/dev/null | grep -q "install ok installed" ||
    need_pkgs+=(libonnxruntime-dev)
  ort_include=/usr/include/onnxruntime
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ -n "${NO_APT:-}" ]; then
    echo "build.sh: missing Debian packages: ${need_pkgs[*]} (NO_APT is set)" >&2
    exit 2
  fi
  echo "build.sh: installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ -z "$ort_include" ]; then
  # Debian 12: the trixie package, downloaded with a private apt state (the system's sources,
  # lists and pins are untouched) and unpacked here; only usr/include/onnxruntime is used.
  ort_include="$third/onnxruntime/usr/include/onnxruntime"
  if [ ! -f "$ort_include/onnxruntime_c_api.h" ]; then
    source "$here/debian13_ort_headers.sh"
    debian13_ort_headers "$third" build.sh
  fi
fi

# The installed onnxruntime wheel's library is the default the runtime dlopens (a runtime search
# and MMRT_ORT_LIBRARY / the open option override it).
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="$(command -v python3 || true)"; fi
fi
ort_lib=""
if [ -n "$py" ]; then
  ort_lib="$("$py" - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import onnxruntime
except ImportError:
    raise SystemExit(0)
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
print(libs[-1] if libs else "")
EOF
)"
fi

# The openvino wheel ships the OpenVINO C API: its headers and libopenvino_c (dlopen'ed too).
ov_include=""
ov_lib=""
if [ -n "$py" ]; then
  ov_found="$("$py" -c '
import glob, os
try:
    import openvino
except ImportError:
    raise SystemExit(0)
d = os.path.dirname(openvino.__file__)
libs = sorted(glob.glob(os.path.join(d, "libs", "libopenvino_c.so*")))
if os.path.isfile(os.path.join(d, "include", "openvino", "c", "openvino.h")) and libs:
    print(os.path.join(d, "include"))
    print(libs[-1])
' 2>/dev/null || true)"
  ov_include="$(echo "$ov_found" | sed -n 1p)"
  ov_lib="$(echo "$ov_found" | sed -n 2p)"
fi

cmake_args=(-S "$here" -B "$build" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}"
  -DMMRT_ORT_INCLUDE_DIR="$ort_include" -DMMRT_DEFAULT_ORT_LIBRARY="$ort_lib"
  -DMMRT_OV_INCLUDE_DIR="$ov_include" -DMMRT_DEFAULT_OV_LIBRARY="$ov_lib"
  -DMMRT_SANITIZE="${SANITIZE:-0}" -DCMAKE_INSTALL_PREFIX="${PREFIX:-$build/install}")
if [ ! -f "$build/CMakeCache.txt" ] || [ "$here/CMakeLists.txt" -nt "$build/CMakeCache.txt" ] ||
  ! grep -q "MMRT_DEFAULT_ORT_LIBRARY:STRING=$ort_lib\$" "$build/CMakeCache.txt" ||
  ! grep -q "MMRT_DEFAULT_OV_LIBRARY:STRING=$ov_lib\$" "$build/CMakeCache.txt" ||
  ! grep -q "MMRT_SANITIZE:STRING=${SANITIZE:-0}\$" "$build/CMakeCache.txt"; then
  cmake "${cmake_args[@]}" >/dev/null
fi
cmake --build "$build" -j "${JOBS:-2}"

echo "mmrt:    $build/mmrt"
echo "library: $build/libmmdeploy_runtime.so"
echo "header:  $here/include/mmdeploy/runtime.h"
echo "onnxruntime (default, dlopen): ${ort_lib:-none found: pass --ort-library or set MMRT_ORT_LIBRARY}"
echo "openvino (default, dlopen): ${ov_lib:-none: the openvino backend is left out}"
