// Unicode helpers with the semantics HF tokenizers gets from Rust's std and crates
// (char::is_whitespace, unicode_categories, regex's \w, char::to_lowercase), backed by utf8proc.
#include <cstdio>
#include <cstdlib>

#include <utf8proc.h>

#include "internal.h"

namespace mmrt::tok {

size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

char32_t next_cp(const std::string& s, size_t& i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    char32_t cp = ((c & 0x1F) << 6) | (b(1) & 0x3F);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    char32_t cp = ((c & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    i += 3;
    return cp;
  }
  char32_t cp = ((c & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  i += 4;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the valid sequence at s[i], or 0 with `bad` = the bytes of the maximal invalid
// subpart (Rust's Utf8Chunks rule, which from_utf8_lossy follows).
static size_t valid_seq(const std::string& s, size_t i, size_t& bad) {
  auto at = [&](size_t k) -> int { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : -1; };
  auto cont = [&](size_t k) { int v = at(k); return v >= 0x80 && v <= 0xBF; };
  int first = at(0);
  size_t width = utf8_len(static_cast<unsigned char>(first));
  bad = 1;
  if (width == 1) return 1;
  if (width == 0) return 0;
  int second = at(1);
  if (width == 2) return cont(1) ? 2 : 0;
  bool ok2;
  if (width == 3) {
    ok2 = (first == 0xE0 && second >= 0xA0 && second <= 0xBF) ||
          (first >= 0xE1 && first <= 0xEC && second >= 0x80 && second <= 0xBF) ||
          (first == 0xED && second >= 0x80 && second <= 0x9F) ||
          (first >= 0xEE && first <= 0xEF && second >= 0x80 && second <= 0xBF);
    if (!ok2) return 0;
    bad = 2;
    return cont(2) ? 3 : 0;
  }
  ok2 = (first == 0xF0 && second >= 0x90 && second <= 0xBF) ||
        (first >= 0xF1 && first <= 0xF3 && second >= 0x80 && second <= 0xBF) ||
        (first == 0xF4 && second >= 0x80 && second <= 0x8F);
  if (!ok2) return 0;
  bad = 2;
  if (!cont(2)) return 0;
  bad = 3;
  return cont(3) ? 4 : 0;
}

size_t invalid_utf8_at(const std::string& s) {
  size_t i = 0, bad = 0;
  while (i < s.size()) {
    size_t n = valid_seq(s, i, bad);
    if (n == 0) return i;
    i += n;
  }
  return std::string::npos;
}

std::string from_utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0, bad = 0;
  while (i < bytes.size()) {
    size_t n = valid_seq(bytes, i, bad);
    if (n) {
      out.append(bytes, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

namespace {

struct CpRange {
  char32_t lo, hi;
};
struct LowerEntry {
  char32_t cp;
  char32_t to[3];
};
#include "unicode_tables.inc"

template <size_t N>
bool in_table(const CpRange (&table)[N], char32_t c) {
  size_t lo = 0, hi = N;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (table[mid].hi < c) lo = mid + 1;
    else hi = mid;
  }
  return lo < N && table[lo].lo <= c;
}

template <size_t N>
std::string class_of(const CpRange (&table)[N]) {
  std::string out;
  char buf[40];
  for (auto& r : table) {
    if (r.lo == r.hi) std::snprintf(buf, sizeof buf, "\\x{%X}", static_cast<unsigned>(r.lo));
    else std::snprintf(buf, sizeof buf, "\\x{%X}-\\x{%X}", static_cast<unsigned>(r.lo), static_cast<unsigned>(r.hi));
    out += buf;
  }
  return out;
}

// Code points the normalization tables of tokenizers (unicode-normalization-alignments) do not
// decompose while utf8proc's newer ones do: kept as they are (found by the parity probes).
const CpRange kNoCanonicalDecomposition[] = {{0x11938, 0x11938}};
const CpRange kNoCompatDecomposition[] = {{0x32FF, 0x32FF},   {0xA7F2, 0xA7F4},   {0xAB69, 0xAB69},
                                          {0x10781, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA},
                                          {0x11938, 0x11938}, {0x1E030, 0x1E06D}, {0x1F16C, 0x1F16C},
                                          {0x1FBF0, 0x1FBF9}};

}  // namespace

bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_other(char32_t c) { return in_table(kOther, c); }
bool is_mark_nonspacing(char32_t c) { return in_table(kMarkNonspacing, c); }
bool is_combining_mark(char32_t c) { return in_table(kCombiningMark, c); }
bool is_bert_punctuation(char32_t c) { return in_table(kBertPunctuation, c); }
bool is_numeric(char32_t c) { return in_table(kNumeric, c); }
bool is_regex_word(char32_t c) { return in_table(kRegexWord, c); }

bool is_onig_letter(char32_t c) { return c < 0x80 ? ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') : in_table(kOnigLetter, c); }
bool is_onig_number(char32_t c) { return c < 0x80 ? (c >= '0' && c <= '9') : in_table(kOnigNumber, c); }
bool is_onig_space(char32_t c) { return in_table(kOnigSpace, c); }

const std::string& onig_class(char name) {
  static const std::string letter = class_of(kOnigLetter), number = class_of(kOnigNumber), space = class_of(kOnigSpace);
  return name == 'L' ? letter : name == 'N' ? number : space;
}

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

void append_lowercase(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  size_t lo = 0, hi = sizeof kLowercase / sizeof kLowercase[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kLowercase[mid].cp < c) lo = mid + 1;
    else hi = mid;
  }
  if (lo < sizeof kLowercase / sizeof kLowercase[0] && kLowercase[lo].cp == c) {
    for (char32_t x : kLowercase[lo].to)
      if (x) append_utf8(out, x);
    return;
  }
  append_utf8(out, c);
}

static std::string utf8proc_normalize(const std::string& s, int options) {
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    static_cast<utf8proc_ssize_t>(s.size()), &out,
                                    static_cast<utf8proc_option_t>(options));
  if (n < 0) throw TokenizerError(std::string("unicode normalization failed: ") + utf8proc_errmsg(n));
  std::string result(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

std::string unicode_normalize(const std::string& s, const std::string& form) {
  int options = UTF8PROC_STABLE;
  bool compat = form == "NFKC" || form == "NFKD";
  if (form == "NFC" || form == "NFKC") options |= UTF8PROC_COMPOSE;
  else options |= UTF8PROC_DECOMPOSE;
  if (compat) options |= UTF8PROC_COMPAT;
  // Segments between the code points tokenizers leaves alone are normalized by utf8proc.
  std::string out, segment;
  size_t i = 0;
  while (i < s.size()) {
    size_t b = i;
    char32_t c = next_cp(s, i);
    bool keep = compat ? in_table(kNoCompatDecomposition, c) : in_table(kNoCanonicalDecomposition, c);
    if (keep) {
      if (!segment.empty()) out += utf8proc_normalize(segment, options);
      segment.clear();
      out.append(s, b, i - b);
    } else {
      segment.append(s, b, i - b);
    }
  }
  if (!segment.empty()) out += utf8proc_normalize(segment, options);
  return out;
}

}  // namespace mmrt::tok
