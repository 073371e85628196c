# Sourced by build.sh and cross/build-aarch64.sh (one copy of the Debian 12 header fetch).
#
#   debian13_ort_headers THIRD WHO
#
# Downloads Debian 13 (trixie)'s libonnxruntime-dev by name with a private apt state under
# THIRD/apt-trixie (the system's sources, lists and pins are untouched) and unpacks it into
# THIRD/onnxruntime; callers use only THIRD/onnxruntime/usr/include/onnxruntime (the C API header,
# architecture independent). WHO prefixes the progress line (the calling script's name).
debian13_ort_headers() {
  local third="$1" who="$2"
  local apt_dir="$third/apt-trixie"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt_dir/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoDropPrivs=1"
    -o "APT::Sandbox::User=root")
  echo "$who: fetching libonnxruntime-dev (Debian 13) for the ONNX Runtime C API header"
  apt-get "${opts[@]}" update -qq
  (cd "$apt_dir/debs" && apt-get "${opts[@]}" download libonnxruntime-dev >/dev/null)
  dpkg -x "$(ls "$apt_dir"/debs/libonnxruntime-dev_*.deb | head -1)" "$third/onnxruntime"
}
