// Test driver for the native tokenizer: reads JSON lines on stdin, writes one JSON line per input.
//
//   tokenize_main encode TOKENIZER [--no-special]   "text"          -> [ids]
//   tokenize_main decode TOKENIZER [--keep-special] [ids]           -> "text"
//   tokenize_main batch  TOKENIZER MAX_LENGTH [PAD_ID|-] [longest|max_length]
//                                                   ["t1", "t2"]    -> {"input_ids", "attention_mask", "counts"}
//   tokenize_main bench  TOKENIZER REPEATS          "text" lines    -> {"single_s", "batch_s", "tokens"}
//                                                   (process CPU seconds: fair on a loaded machine)
//   tokenize_main threads TOKENIZER THREADS         "text" lines    -> {"same": bool} (one shared
//                                                   tokenizer, every thread encoding every line)
// A line that fails prints {"error": message}; a tokenizer that does not load exits 2 with the
// message on stderr.
#include <ctime>
#include <iostream>
#include <thread>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

using nlohmann::json;

static int usage() {
  std::cerr << "usage: tokenize_main encode|decode|batch|bench TOKENIZER [args] < json-lines\n";
  return 2;
}

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  if (argc < 3) return usage();
  std::string mode = argv[1], path = argv[2];
  std::vector<std::string> rest(argv + 3, argv + argc);
  try {
    if (mode == "threads") {
      if (rest.empty()) return usage();
      auto tok = mmrt::Tokenizer::from_file(path);
      std::vector<std::string> texts;
      std::string line;
      while (std::getline(std::cin, line)) texts.push_back(json::parse(line).get<std::string>());
      std::vector<std::vector<int64_t>> serial;
      std::vector<std::string> decoded;
      for (auto& t : texts) {
        serial.push_back(tok->encode(t));
        decoded.push_back(tok->decode(serial.back()));
      }
      int n = std::stoi(rest[0]);
      std::vector<int> same(n, 1);
      std::vector<std::thread> pool;
      for (int k = 0; k < n; ++k)
        pool.emplace_back([&, k] {
          for (size_t i = 0; i < texts.size(); ++i) {
            size_t at = (i + static_cast<size_t>(k) * 7) % texts.size();  // threads start apart
            if (tok->encode(texts[at]) != serial[at] || tok->decode(serial[at]) != decoded[at]) same[k] = 0;
          }
        });
      for (auto& th : pool) th.join();
      bool all = true;
      for (int v : same) all = all && v;
      std::cout << json({{"same", all}}).dump() << "\n";
      return 0;
    }
    if (mode == "encode" || mode == "decode" || mode == "bench") {
      auto tok = mmrt::Tokenizer::from_file(path);
      bool flag = !rest.empty() && (rest[0] == "--no-special" || rest[0] == "--keep-special");
      std::string line;
      if (mode == "bench") {
        if (rest.empty()) return usage();
        int repeats = std::stoi(rest[0]);
        std::vector<std::string> texts;
        while (std::getline(std::cin, line)) texts.push_back(json::parse(line).get<std::string>());
        size_t tokens = 0;
        auto cpu = [] {
          timespec ts{};
          clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
          return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
        };
        double t0 = cpu();
        for (int r = 0; r < repeats; ++r)
          for (auto& t : texts) tokens += tok->encode(t).size();
        double t1 = cpu();
        auto tt = mmrt::TextTokenizer(std::shared_ptr<const mmrt::Tokenizer>(std::move(tok)), 64,
                                      0, mmrt::Padding::Longest);
        for (int r = 0; r < repeats; ++r) tt(texts);
        double t2 = cpu();
        json out = {{"single_s", t1 - t0}, {"batch_s", t2 - t1}, {"tokens", tokens}};
        std::cout << out.dump() << "\n";
        return 0;
      }
      while (std::getline(std::cin, line)) {
        json out;
        try {
          json in = json::parse(line);
          if (mode == "encode") out = tok->encode(in.get<std::string>(), !flag);
          else out = tok->decode(in.get<std::vector<int64_t>>(), !flag);
        } catch (const std::exception& e) {
          out = {{"error", e.what()}};
        }
        std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
      }
      return 0;
    }
    if (mode == "batch") {
      if (rest.empty()) return usage();
      size_t max_length = std::stoul(rest[0]);
      std::optional<int64_t> pad;
      if (rest.size() > 1 && rest[1] != "-") pad = std::stoll(rest[1]);
      auto padding = rest.size() > 2 && rest[2] == "max_length" ? mmrt::Padding::MaxLength : mmrt::Padding::Longest;
      auto tt = mmrt::TextTokenizer::from_file(path, max_length, pad, padding);
      std::string line;
      while (std::getline(std::cin, line)) {
        json out;
        try {
          auto texts = json::parse(line).get<std::vector<std::string>>();
          mmrt::Batch b = tt(texts);
          json ids = json::array(), mask = json::array();
          for (size_t r = 0; r < b.rows; ++r) {
            auto at = static_cast<std::ptrdiff_t>(r * b.cols);
            ids.push_back(std::vector<int64_t>(b.input_ids.begin() + at, b.input_ids.begin() + at + b.cols));
            mask.push_back(std::vector<int64_t>(b.attention_mask.begin() + at, b.attention_mask.begin() + at + b.cols));
          }
          out = {{"input_ids", ids}, {"attention_mask", mask}, {"counts", tt.count_tokens(texts)}};
        } catch (const std::exception& e) {
          out = {{"error", e.what()}};
        }
        std::cout << out.dump() << "\n";
      }
      return 0;
    }
  } catch (const mmrt::TokenizerError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  return usage();
}
