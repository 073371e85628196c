#include "bundle.h"

#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <regex>
#include <sstream>

#include "error.h"
#include "sha256.h"

namespace mmrt {

namespace {

const char* kManifest = "manifest.json";
const char* kVerified = ".verified.json";
const std::vector<std::string> kBackends = {"onnxruntime", "openvino", "tensorrt"};
const std::vector<std::string> kPrecisions = {"fp32", "fp16", "bf16", "int8", "int4"};
// select.py PREFERENCE: without measurements for this machine, the first that runs here wins
const std::vector<std::pair<std::string, std::string>> kPreference = {
    {"tensorrt", "int8"},    {"tensorrt", "fp16"},    {"onnxruntime", "int4"}, {"openvino", "int8"},
    {"onnxruntime", "int8"}, {"openvino", "bf16"},    {"onnxruntime", "fp32"}, {"openvino", "fp32"}};

// -- values shown as Python shows them (manifest.py's messages) -------------------------------

std::string py_str(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == q) out += std::string("\\") + char(q);
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += char(c);
  }
  return out + q;
}

std::string py_repr(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "None";
    case json::value_t::boolean: return v.get<bool>() ? "True" : "False";
    case json::value_t::string: return py_str(v.get<std::string>());
    case json::value_t::number_float: {
      double d = v.get<double>();
      if (std::isnan(d)) return "nan";
      if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
      std::string s = v.dump();
      if (s.find_first_of(".eE") == std::string::npos) s += ".0";
      return s;
    }
    case json::value_t::array: {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); i++) s += (i ? ", " : "") + py_repr(v[i]);
      return s + "]";
    }
    case json::value_t::object: {
      std::string s = "{";
      bool first = true;
      for (auto& [k, x] : v.items()) s += (first ? "" : ", ") + py_str(k) + ": " + py_repr(x), first = false;
      return s + "}";
    }
    default: return v.dump();
  }
}

std::string py_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "NoneType";
    case json::value_t::boolean: return "bool";
    case json::value_t::string: return "str";
    case json::value_t::number_float: return "float";
    case json::value_t::array: return "list";
    case json::value_t::object: return "dict";
    default: return "int";
  }
}

std::string shorten(const json& v) {
  std::string s = py_repr(v);
  return s.size() <= 60 ? s : s.substr(0, 57) + "...";
}

struct Bad {
  std::string where, why;
};

using Check = std::function<void(const json&, const std::string&)>;

[[noreturn]] void bad(const std::string& where, const std::string& why) { throw Bad{where, why}; }

bool is_int(const json& v) { return v.is_number_integer(); }  // JSON true/false are not numbers here

Check type_check(std::function<bool(const json&)> ok, const std::string& name) {
  return [ok, name](const json& v, const std::string& where) {
    if (!ok(v)) bad(where, "must be " + name + ", got " + py_type(v) + " " + shorten(v));
  };
}

const Check STR = type_check([](const json& v) { return v.is_string(); }, "a string");
const Check DICT = type_check([](const json& v) { return v.is_object(); }, "an object");
const Check LIST = type_check([](const json& v) { return v.is_array(); }, "a list");

void INT(const json& v, const std::string& where) {
  if (!is_int(v)) bad(where, "must be an integer, got " + py_type(v) + " " + shorten(v));
}

Check at_least(long long n, long long most = LLONG_MAX) {
  return [n, most](const json& v, const std::string& where) {
    INT(v, where);
    // an integer past int64 is out of range either way
    long long x = v.is_number_unsigned() && v.get<unsigned long long>() > (unsigned long long)LLONG_MAX
                      ? LLONG_MAX
                      : v.get<long long>();
    if (x < n || x > most)
      bad(where, "must be >= " + std::to_string(n) + (most != LLONG_MAX ? " and <= " + std::to_string(most) : "") +
                     ", got " + v.dump());
  };
}

void NUMBER(const json& v, const std::string& where) {
  if (!v.is_number() || (v.is_number_float() && !std::isfinite(v.get<double>())))
    bad(where, "must be a finite number, got " + py_type(v) + " " + shorten(v));
}

void BOOL(const json& v, const std::string& where) {
  if (!v.is_boolean()) bad(where, "must be true or false, got " + py_type(v) + " " + shorten(v));
}

std::string fmt_g(double x) {
  char buf[32];
  snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

Check bounded(double lo, double hi) {
  return [lo, hi](const json& v, const std::string& where) {
    NUMBER(v, where);
    double x = v.get<double>();
    if (!(lo <= x && x <= hi)) bad(where, "must be between " + fmt_g(lo) + " and " + fmt_g(hi) + ", got " + shorten(v));
  };
}

void SHA256(const json& v, const std::string& where) {
  STR(v, where);
  static const std::regex hex("[0-9a-f]{64}");
  if (!std::regex_match(v.get<std::string>(), hex)) bad(where, "must be a sha256 hex digest, got " + shorten(v));
}

// posixpath.normpath for the relative paths REL_PATH accepts (no leading '/')
std::string normpath(const std::string& p) {
  std::vector<std::string> parts;
  std::stringstream ss(p);
  std::string item;
  while (std::getline(ss, item, '/')) {
    if (item.empty() || item == ".") continue;
    if (item == ".." && !parts.empty() && parts.back() != "..") parts.pop_back();
    else parts.push_back(item);
  }
  std::string out;
  for (size_t i = 0; i < parts.size(); i++) out += (i ? "/" : "") + parts[i];
  return out.empty() ? "." : out;
}

void REL_PATH(const json& v, const std::string& where) {
  STR(v, where);
  const std::string s = v.get<std::string>();
  bool drive = s.size() >= 2 && std::isalpha((unsigned char)s[0]) && s[1] == ':';
  bool is_bad = s.empty() || s[0] == '/' || s[0] == '\\' || s.find('\\') != std::string::npos ||
                s.find('\0') != std::string::npos || drive || normpath(s) != s || s.substr(0, s.find('/')) == ".." ||
                s == ".";
  if (is_bad) bad(where, "must be a relative path inside the bundle, got " + shorten(v));
}

Check one_of(std::vector<std::string> choices) {
  return [choices](const json& v, const std::string& where) {
    if (v.is_string())
      for (auto& c : choices)
        if (v.get<std::string>() == c) return;
    std::string all;
    for (size_t i = 0; i < choices.size(); i++) all += (i ? ", " : "") + choices[i];
    bad(where, "must be one of " + all + ", got " + shorten(v));
  };
}

using Fields = std::vector<std::pair<std::string, Check>>;

Check obj(Fields required, Fields optional = {}) {
  return [required, optional](const json& v, const std::string& where) {
    DICT(v, where);
    for (auto& [k, c] : required) {
      if (!v.contains(k)) bad(where + "." + k, "is missing");
      c(v[k], where + "." + k);
    }
    for (auto& [k, c] : optional)
      if (v.contains(k)) c(v[k], where + "." + k);
  };
}

Check list_of(Check item, bool nonempty = false) {
  return [item, nonempty](const json& v, const std::string& where) {
    LIST(v, where);
    if (nonempty && v.empty()) bad(where, "must not be empty");
    for (size_t i = 0; i < v.size(); i++) item(v[i], where + "[" + std::to_string(i) + "]");
  };
}

Check map_of(Check key, Check value, bool nonempty = false) {
  return [key, value, nonempty](const json& v, const std::string& where) {
    DICT(v, where);
    if (nonempty && v.empty()) bad(where, "must not be empty");
    for (auto& [k, x] : v.items()) {
      key(json(k), where + " key " + py_str(k));
      value(x, where + "[" + py_str(k) + "]");
    }
  };
}

void DIM(const json& v, const std::string& where) {
  if (!(is_int(v) || v.is_string())) bad(where, "must be a size or a symbolic name, got " + shorten(v));
}

const Check TENSOR = obj({{"name", STR}, {"dtype", STR}, {"shape", list_of(DIM)}});
const Check TOKEN_ID = at_least(0, (1LL << 31) - 1);
const Check SCALE = bounded(-1e4, 1e4);
const Check POSITIONS = at_least(1, 1 << 20);

const Check& manifest_schema() {
  static const Check schema = obj(
      {
          {"schema_version", INT},
          {"family", STR},
          {"files", map_of(REL_PATH, obj({{"sha256", SHA256}, {"bytes", at_least(0)}}), true)},
          {"components",
           map_of(STR, obj({{"inputs", list_of(TENSOR)}, {"outputs", list_of(TENSOR, true)}}, {{"onnx", REL_PATH}}),
                  true)},
          {"artifacts",
           list_of(obj(
               {
                   {"component", STR},
                   {"backend", one_of(kBackends)},
                   {"precision", one_of(kPrecisions)},
                   {"path", REL_PATH},
                   {"files", list_of(REL_PATH, true)},
               },
               {
                   {"runtime", DICT},
                   {"built_for", DICT},
                   {"parity", DICT},
                   {"recipe", DICT},
                   {"gate", obj({}, {{"passed", BOOL},
                                     {"min_cosine", NUMBER},
                                     {"agreement", NUMBER},
                                     {"min_agreement", NUMBER}})},
               }))},
      },
      {
          {"model", STR},
          {"target", STR},
          {"tokenizer", obj({{"file", REL_PATH}, {"max_length", at_least(1, 1 << 20)}},
                            {{"pad_id", TOKEN_ID}, {"padding", one_of({"longest", "max_length"})}})},
          {"preprocess", obj({{"file", REL_PATH}, {"config", DICT}})},
      });
  return schema;
}

// the families' own blocks (their pipelines' manifest_blocks)
void family_blocks(const json& m) {
  const std::string family = m["family"].get<std::string>();
  if (family == "clip")
    obj({{"preprocess", DICT}, {"tokenizer", DICT}, {"clip", obj({{"logit_scale", SCALE}})}})(m, "manifest");
  else if (family == "siglip")
    obj({{"preprocess", DICT},
         {"tokenizer", DICT},
         {"siglip", obj({{"logit_scale", SCALE}, {"logit_bias", SCALE}})}})(m, "manifest");
  else if (family == "align")
    obj({{"preprocess", DICT}, {"tokenizer", DICT}, {"align", obj({{"temperature", bounded(1e-6, 1e4)}})}})(m,
                                                                                                             "manifest");
}

void cross_check(const json& m) {
  const json& files = m["files"];
  const json& comps = m["components"];
  for (size_t i = 0; i < m["artifacts"].size(); i++) {
    const json& a = m["artifacts"][i];
    std::string where = "manifest.artifacts[" + std::to_string(i) + "]";
    std::string comp = a["component"].get<std::string>();
    if (!comps.contains(comp)) {
      std::string names;
      for (auto& [k, _] : comps.items()) names += (names.empty() ? "" : ", ") + k;
      bad(where + ".component", py_str(comp) + " is not one of the bundle's components (" + names + ")");
    }
    bool in_files = false;
    for (auto& f : a["files"]) in_files |= f == a["path"];
    if (!in_files) bad(where + ".path", py_str(a["path"].get<std::string>()) + " is not in the artifact's own files");
    for (size_t j = 0; j < a["files"].size(); j++) {
      std::string rel = a["files"][j].get<std::string>();
      if (!files.contains(rel))
        bad(where + ".files[" + std::to_string(j) + "]", py_str(rel) + " is not listed (with its sha256) in manifest.files");
    }
  }
  for (const char* block : {"tokenizer", "preprocess"}) {
    if (m.contains(block) && m[block].contains("file")) {
      std::string rel = m[block]["file"].get<std::string>();
      if (!files.contains(rel))
        bad(std::string("manifest.") + block + ".file", py_str(rel) + " is not listed (with its sha256) in manifest.files");
    }
  }
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string realpath_of(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return p;
  return buf;
}

std::string join_names(const std::vector<std::pair<std::string, std::string>>& v) {
  std::string s;
  for (auto& [b, p] : v) s += (s.empty() ? "" : ", ") + b + "/" + p;
  return s.empty() ? "none" : s;
}

}  // namespace

std::string short_repr(const std::string& s) { return shorten(json(s)); }

void validate_manifest(const json& manifest, const std::string& source) {
  try {
    manifest_schema()(manifest, "manifest");
    cross_check(manifest);
    family_blocks(manifest);
  } catch (const Bad& b) {
    fail(MMRT_ERR_BUNDLE, source + ": " + b.where + ": " + b.why);
  }
}


Bundle Bundle::open(const std::string& root_in) {
  std::string root = root_in;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  struct stat st;
  if (stat(root.c_str(), &st) != 0) fail(MMRT_ERR_BUNDLE, "bundle not found: " + root);
  if (!S_ISDIR(st.st_mode)) fail(MMRT_ERR_BUNDLE, "not a bundle directory: " + root);
  std::string mpath = root + "/" + kManifest;
  if (stat(mpath.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    fail(MMRT_ERR_BUNDLE, mpath + " is missing: " + root + " is not an mmdeploy bundle");
  if (access(mpath.c_str(), R_OK) != 0) fail(MMRT_ERR_BUNDLE, "cannot read " + mpath + ": permission denied");
  json m;
  try {
    m = json::parse(read_file(mpath));
  } catch (const json::exception& e) {
    std::string what = e.what();
    for (auto& c : what)
      if (c == '\n') c = ' ';
    fail(MMRT_ERR_BUNDLE, mpath + " is corrupt: " + what);
  }
  if (!m.is_object()) fail(MMRT_ERR_BUNDLE, mpath + ": must hold a JSON object, got " + py_type(m));
  json version = m.contains("schema_version") ? m["schema_version"] : json();
  if (!(version.is_number_integer() && version.get<long long>() == 1))
    fail(MMRT_ERR_BUNDLE, mpath + " has schema_version " + py_repr(version) +
                              "; this mmdeploy reads version 1: re-export the bundle or use a matching mmdeploy");
  validate_manifest(m, mpath);
  Bundle b;
  b.root_ = root;
  b.manifest_ = std::move(m);
  for (auto& a : b.manifest_["artifacts"]) {
    Artifact art;
    art.component = a["component"];
    art.backend = a["backend"];
    art.precision = a["precision"];
    art.path = a["path"];
    art.files = a["files"].get<std::vector<std::string>>();
    if (a.contains("runtime")) art.runtime = a["runtime"];
    art.passed = a.contains("gate") && a["gate"].value("passed", false);
    b.artifacts_.push_back(std::move(art));
  }
  return b;
}

std::string Bundle::name() const {
  if (manifest_.contains("model") && manifest_["model"].is_string()) return manifest_["model"];
  auto slash = root_.rfind('/');
  return slash == std::string::npos ? root_ : root_.substr(slash + 1);
}

std::vector<std::string> Bundle::components() const {
  std::vector<std::string> out;
  for (auto& [k, _] : manifest_["components"].items()) out.push_back(k);
  return out;
}

std::vector<Artifact> Bundle::find(const std::string& component, const std::string& backend,
                                   const std::string& precision) const {
  std::vector<Artifact> out;
  for (auto& a : artifacts_)
    if ((component.empty() || a.component == component) && (backend.empty() || a.backend == backend) &&
        (precision.empty() || a.precision == precision))
      out.push_back(a);
  return out;
}

std::string Bundle::path(const std::string& rel) const {
  std::string p = root_ + "/" + rel;
  std::string r = realpath_of(root_), rp = realpath_of(p);
  if (rp != r && rp.compare(0, r.size() + 1, r + "/") != 0)
    fail(MMRT_ERR_BUNDLE, p + ": resolves outside the bundle " + r + ": refusing to open it");
  return p;
}

void Bundle::verify(const std::vector<std::string>& rels, bool full) {
  std::lock_guard<std::mutex> lock(mu_);
  const json& table = manifest_["files"];
  json stamps = json::object();
  if (!full) {
    try {
      stamps = json::parse(read_file(root_ + "/" + kVerified));
      if (!stamps.is_object()) stamps = json::object();
    } catch (...) {
      stamps = json::object();
    }
  }
  json fresh = json::object();
  auto save = [&]() {
    if (fresh.empty()) return;
    try {  // best effort, as bundle.py: a read-only bundle simply hashes again next time
      json d = json::object();
      try {
        d = json::parse(read_file(root_ + "/" + kVerified));
        if (!d.is_object()) d = json::object();
      } catch (...) {
      }
      for (auto& [k, v] : fresh.items()) {
        if (v.is_null()) d.erase(k);
        else d[k] = v;
      }
      std::string tmp = root_ + "/" + kVerified + "." + std::to_string(getpid()) + ".tmp";
      {
        std::ofstream f(tmp, std::ios::binary);
        if (!f) return;
        f << d.dump();
        if (!f) return;
      }
      if (rename(tmp.c_str(), (root_ + "/" + kVerified).c_str()) != 0) unlink(tmp.c_str());
    } catch (...) {
    }
  };
  try {
    for (const auto& rel : rels) {
      if (verified_.count(rel)) continue;
      if (!table.contains(rel)) fail(MMRT_ERR_BUNDLE, root_ + "/" + rel + " is not listed in " + root_ + "/" + kManifest);
      const json& entry = table[rel];
      std::string p = path(rel);
      struct stat st;
      if (stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
        fail(MMRT_ERR_BUNDLE, p + " is missing from the bundle: re-export it");
      long long mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
      long long ctime_ns = (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
      json stamp = json::array({(long long)st.st_size, mtime_ns, ctime_ns, (long long)st.st_ino, entry["sha256"]});
      if (!stamps.contains(rel) || stamps[rel] != stamp) {
        if ((long long)st.st_size != entry["bytes"].get<long long>() ||
            sha256_file(p) != entry["sha256"].get<std::string>()) {
          fresh[rel] = nullptr;
          fail(MMRT_ERR_BUNDLE, p + " does not match its sha256 in the manifest (modified or corrupt): re-export it");
        }
        fresh[rel] = stamp;
      }
      verified_.insert(rel);
    }
  } catch (...) {
    save();
    throw;
  }
  save();
}

void Bundle::verify_all(bool full) {
  std::vector<std::string> rels;
  for (auto& [k, _] : manifest_["files"].items()) rels.push_back(k);
  if (full) {
    std::lock_guard<std::mutex> lock(mu_);
    verified_.clear();
  }
  verify(rels, full);
}

std::vector<std::string> Bundle::verified() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {verified_.begin(), verified_.end()};
}

std::string machine_key() {
  static const std::vector<std::string> isa = {"avx2",        "fma",         "avx512f",  "avx512_vnni", "avx512_bf16",
                                               "avx512_fp16", "amx_tile",    "amx_bf16", "amx_int8",    "avx_vnni"};
  struct utsname u;
  std::string model = uname(&u) == 0 ? u.machine : "";
  std::set<std::string> flags;
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  bool have_model = false;
  while (std::getline(f, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon), value = line.substr(colon + 1);
    auto strip = [](std::string s) {
      size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
      return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    };
    if (key.rfind("model name", 0) == 0 && !have_model) {
      model = strip(value);
      have_model = true;
    } else if (key.rfind("flags", 0) == 0) {
      std::stringstream ss(value);
      std::string fl;
      while (ss >> fl) flags.insert(fl);
      break;
    }
  }
  std::string out = model + " [";
  bool first = true;
  for (auto& x : isa)
    if (flags.count(x)) out += (first ? "" : " ") + x, first = false;
  return out + "]";
}

std::pair<std::string, std::string> Bundle::select_variant(const std::string& backend, const std::string& precision,
                                                           const std::function<bool(const Artifact&)>& runs_here) const {
  if (!backend.empty()) {
    bool known = false;
    for (auto& b : kBackends) known |= b == backend;
    if (!known) fail(MMRT_ERR_INVALID_ARGUMENT, "unknown backend " + py_str(backend) + ": choose from onnxruntime, openvino, tensorrt");
  }
  std::vector<std::string> comps = components();
  // variants in the order their first artifact appears (Python's dict order)
  std::vector<std::pair<std::string, std::string>> order;
  std::map<std::pair<std::string, std::string>, std::vector<const Artifact*>> variants;
  for (auto& a : artifacts_) {
    auto key = std::make_pair(a.backend, a.precision);
    if (!variants.count(key)) order.push_back(key);
    variants[key].push_back(&a);
  }
  std::vector<std::pair<std::string, std::string>> complete, matching;
  for (auto& k : order) {
    std::set<std::string> have;
    for (auto* a : variants[k]) have.insert(a->component);
    bool all = true;
    for (auto& c : comps) all &= have.count(c) > 0;
    if (!all) continue;
    complete.push_back(k);
    if ((backend.empty() || k.first == backend) && (precision.empty() || k.second == precision)) matching.push_back(k);
  }
  if (matching.empty()) {
    auto sorted = complete;
    std::sort(sorted.begin(), sorted.end());
    std::string want = backend.empty() ? precision : (precision.empty() ? backend : backend + "/" + precision);
    if (want.empty()) want = "any variant";
    fail(MMRT_ERR_BUNDLE, root_ + " has no " + want + " for all components (has: " + join_names(sorted) + ")");
  }
  bool explicit_variant = !backend.empty() && !precision.empty();
  std::map<std::pair<std::string, std::string>, double> measured;
  if (manifest_.contains("measured") && manifest_["measured"].is_object()) {
    auto key = machine_key();
    const json& table = manifest_["measured"];
    if (table.contains(key) && table[key].is_object())
      for (auto& [k, v] : table[key].items()) {
        auto slash = k.find('/');
        if (slash != std::string::npos && v.is_number()) measured[{k.substr(0, slash), k.substr(slash + 1)}] = v.get<double>();
      }
  }
  auto rank = [&](const std::pair<std::string, std::string>& k) {
    for (size_t i = 0; i < kPreference.size(); i++)
      if (kPreference[i] == k) return i;
    return kPreference.size();
  };
  auto score = [&](const std::pair<std::string, std::string>& k) {
    double m = measured.count(k) ? measured[k] : std::numeric_limits<double>::infinity();
    return std::make_pair(m, rank(k));
  };
  // select.py's min over the variants that pass and run here, asked best first: runs_here may
  // load a backend (OpenVINO's core: time and tens of MB), so it is asked only until one passes
  std::stable_sort(matching.begin(), matching.end(), [&](auto& a, auto& b) { return score(a) < score(b); });
  for (auto& k : matching) {
    bool ok = explicit_variant;
    if (!ok) {
      ok = true;
      for (auto* a : variants[k]) ok = ok && a->passed && runs_here(*a);
    }
    if (ok) return k;
  }
  fail(MMRT_ERR_BUNDLE, root_ + ": no variant matching " + (backend.empty() ? "any" : backend) + "/" +
                            (precision.empty() ? "any" : precision) +
                            " passed its accuracy gate and runs here; name --backend and --precision to force one");
}

}  // namespace mmrt
