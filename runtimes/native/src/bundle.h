// A bundle directory read as runtimes/bundle.py and runtimes/manifest.py read it: the same schema
// checks with one-line errors naming the field, sha256 verification of every file used, and the
// default variant runtimes/select.py's select_variant picks.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace mmrt {

using json = nlohmann::json;

struct Artifact {
  std::string component, backend, precision, path;
  std::vector<std::string> files;
  json runtime = json::object();
  bool passed = false;
};


class Bundle {
 public:
  // Throws Error(MMRT_ERR_BUNDLE) with Python's messages: not found, not a directory, no
  // manifest, corrupt JSON, wrong schema_version, the first bad field.
  static Bundle open(const std::string& root);

  const std::string& root() const { return root_; }
  const json& manifest() const { return manifest_; }
  std::string family() const { return manifest_["family"].get<std::string>(); }
  std::string name() const;
  std::vector<std::string> components() const;
  const std::vector<Artifact>& artifacts() const { return artifacts_; }
  std::vector<Artifact> find(const std::string& component, const std::string& backend,
                             const std::string& precision) const;

  // A file of the bundle, refusing one that resolves outside it (a symlink pointing out).
  std::string path(const std::string& rel) const;
  // Files exist and match their sha256; a file whose stat stamp equals the one in
  // .verified.json (written by either runtime when it last hashed correctly) is not hashed again
  // unless `full`. Thread safe.
  void verify(const std::vector<std::string>& rels, bool full = false);
  void verify_all(bool full);
  std::vector<std::string> verified() const;

  // (backend, precision): select_variant's rules. Empty strings mean "not given"; runs_here says
  // whether an artifact's backend is available and the CPU has its precision natively.
  std::pair<std::string, std::string> select_variant(const std::string& backend, const std::string& precision,
                                                     const std::function<bool(const Artifact&)>& runs_here) const;

  Bundle(Bundle&& other) noexcept
      : root_(std::move(other.root_)), manifest_(std::move(other.manifest_)), artifacts_(std::move(other.artifacts_)),
        verified_(std::move(other.verified_)) {}

 private:
  Bundle() = default;
  std::string root_;
  json manifest_;
  std::vector<Artifact> artifacts_;
  std::set<std::string> verified_;
  mutable std::mutex mu_;
};

// "CPU model [isa flags]": the key `bench` records measured latencies under (common/env.py).
std::string machine_key();

// manifest.py's checks on a parsed manifest; throws Error(MMRT_ERR_BUNDLE, source + ": " + field + ": " + why).
void validate_manifest(const json& manifest, const std::string& source);

}  // namespace mmrt
