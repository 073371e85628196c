// HF tokenizers runs its patterns with Oniguruma (Ruby syntax); here PCRE2 runs them, with the
// few differences that matter rewritten: \s, \p{L} and \p{N} use Oniguruma's own tables (PCRE2's
// Unicode version differs, and its \s also takes U+180E), ^ and $ are line anchors as in Ruby, and the iteration over matches skips an
// empty match right after the previous one as the onig crate's find_iter does.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "internal.h"

namespace mmrt::tok {

namespace {

// \s, \S, \p{L}, \pL, \p{N}, \pN become explicit classes with Oniguruma's tables.
std::string translate(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      char name = 0;
      size_t len = 2;
      bool negate = false;
      if (n == 's' || n == 'S') {
        name = 's';
        negate = n == 'S';
      } else if ((n == 'p' || n == 'P') && i + 2 < p.size()) {
        negate = n == 'P';
        if ((p[i + 2] == 'L' || p[i + 2] == 'N')) {
          name = p[i + 2];
          len = 3;
        } else if (p.compare(i + 2, 3, "{L}") == 0 || p.compare(i + 2, 3, "{N}") == 0) {
          name = p[i + 3];
          len = 5;
        }
      }
      if (name && !(negate && in_class)) {
        const std::string& cls = onig_class(name);
        out += in_class ? cls : (negate ? "[^" : "[") + cls + "]";
      } else {
        out.append(p, i, len);
      }
      i += len - 1;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // a ']' right after '[' or '[^' is a literal
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

Regex::Regex(const std::string& onig_pattern, const std::string& where) {
  std::string pattern = translate(onig_pattern);
  int err = 0;
  PCRE2_SIZE err_at = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NO_UTF_CHECK, &err, &err_at, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(where, "regex " + json(onig_pattern).dump() + " does not compile: " + reinterpret_cast<char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // best effort: the interpreter gives the same matches
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(const std::string& s) const {
  auto* code = static_cast<pcre2_code*>(code_);
  // One match block per call keeps a shared Regex thread safe.
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  std::vector<std::pair<size_t, size_t>> found;
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  while (last_end <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), last_end, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (b == e && have_last && last_match_end == e) {
      last_end += last_end < s.size() ? utf8_len(static_cast<unsigned char>(s[last_end])) : 1;
      continue;
    }
    last_end = e;
    have_last = true;
    last_match_end = e;
    found.emplace_back(b, e);
  }
  pcre2_match_data_free(md);
  return found;
}

Pattern::Pattern(const json& spec, const std::string& where) {
  if (!spec.is_object() || spec.size() != 1) fail(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
  if (spec.contains("String")) {
    literal_ = str_field(spec, "String", where);
  } else if (spec.contains("Regex")) {
    regex_ = std::make_unique<Regex>(str_field(spec, "Regex", where), where);
  } else {
    fail(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
}

std::vector<Match> Pattern::find_matches(const std::string& s) const {
  if (s.empty()) return {{0, 0, false}};
  std::vector<std::pair<size_t, size_t>> spans;
  if (regex_) {
    spans = regex_->find_all(s);
  } else if (literal_.empty()) {
    return {{0, s.size(), false}};
  } else {
    for (size_t at = s.find(literal_); at != std::string::npos; at = s.find(literal_, at + literal_.size()))
      spans.emplace_back(at, at + literal_.size());
  }
  std::vector<Match> out;
  size_t prev = 0;
  for (auto [b, e] : spans) {
    if (prev != b) out.push_back({prev, b, false});
    out.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  return out;
}

}  // namespace mmrt::tok
