// mmrt: the native runtime's command line, on the C++ wrapper. Same commands and --json shapes as
// the Python CLI's (mmdeploy info / embed / classify / caption / vqa); user errors print one line
// and exit 2.
#include <mmdeploy/runtime.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {

using nlohmann::json;

const char* kUsage =
    "usage: mmrt info BUNDLE [--json] [--no-verify] [common options]\n"
    "       mmrt embed BUNDLE [--image PATH]... [--text STR]... [--json] [common options]\n"
    "       mmrt classify BUNDLE IMAGE --labels \"a,b,c\" [--template \"a photo of {}\"] [--top N] [--json] [common options]\n"
    "       mmrt caption BUNDLE IMAGE... [--max-new-tokens N] [--num-beams N] [--prompt STR] [--stream] [--json] [--ids]\n"
    "       mmrt vqa|answer BUNDLE IMAGE... -q QUESTION [-q ...] [--max-new-tokens N] [--num-beams N] [--json] [--ids]\n"
    "         (vqa: one question for every image, one image for every question, or one each)\n"
    "common options: --backend NAME --precision NAME --threads N --ort-library PATH (or $MMRT_ORT_LIBRARY)\n"
    "                --device cpu|cuda|tensorrt (ONNX Runtime GPU builds) or an OpenVINO device (GPU, NPU)\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string command, bundle;
  std::vector<std::string> positional, images, texts, questions;
  std::string labels, prompt_template = "{}", prompt;
  bool labels_given = false, as_json = false, verify = true, with_ids = false, stream = false;
  int max_new_tokens = 0, num_beams = 0;
  int top = 5;
  mmdeploy::OpenOptions open;
};

int parse_int(const std::string& flag, const std::string& v, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  long x = strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || x < lo || x > hi)
    throw UsageError(flag + " " + v + ": give an integer between " + std::to_string(lo) + " and " + std::to_string(hi));
  return (int)x;
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) throw UsageError("give a command: info, embed, classify, caption or vqa");
  a.command = argv[1];
  for (int i = 2; i < argc; i++) {
    std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(s + " needs a value");
      return argv[++i];
    };
    if (s == "--json") a.as_json = true;
    else if (s == "--no-verify") a.verify = false;
    else if (s == "--image") a.images.push_back(value());
    else if (s == "--text") a.texts.push_back(value());
    else if (s == "--labels") a.labels = value(), a.labels_given = true;
    else if (s == "--template") a.prompt_template = value();
    else if (s == "--question" || s == "-q") a.questions.push_back(value());
    else if (s == "--max-new-tokens") a.max_new_tokens = parse_int(s, value(), 1, 1 << 20);
    else if (s == "--num-beams" || s == "--beams") a.num_beams = parse_int(s, value(), 1, 16);
    else if (s == "--prompt") a.prompt = value();
    else if (s == "--ids") a.with_ids = true;
    else if (s == "--stream") a.stream = true;
    else if (s == "--top") a.top = parse_int(s, value(), 1, 1 << 30);
    else if (s == "--backend") a.open.backend = value();
    else if (s == "--precision") a.open.precision = value();
    else if (s == "--threads") a.open.threads = parse_int(s, value(), 1, 1024);
    else if (s == "--ort-library") a.open.ort_library = value();
    else if (s == "--device") a.open.device = value();
    else if (s == "-h" || s == "--help") throw UsageError("");
    else if (s.size() > 1 && s[0] == '-' && s != "-") throw UsageError("unknown option " + s);
    else a.positional.push_back(s);
  }
  if (a.positional.empty()) throw UsageError(a.command + ": give the bundle directory");
  a.bundle = a.positional[0];
  return a;
}

std::string py_quote(const std::string& s) { return json(s).dump(); }

// session.py parse_list: "a, b" -> ["a", "b"]; an empty item is an error
std::vector<std::string> parse_labels(const std::string& v) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t comma = v.find(',', start);
    std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t a = item.find_first_not_of(" \t\n\r\f\v"), b = item.find_last_not_of(" \t\n\r\f\v");
    item = a == std::string::npos ? "" : item.substr(a, b - a + 1);
    if (item.empty()) throw mmdeploy::Error(MMRT_ERR_INVALID_ARGUMENT, "--labels " + py_quote(v) + ": empty item; give comma-separated names");
    out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

int cmd_info(const Args& a) {
  auto o = a.open;
  o.verify = a.verify;
  mmdeploy::Model m(a.bundle, o);
  json j = json::parse(m.info_json());
  if (a.as_json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "bundle:     " << j["bundle"].get<std::string>() << "\n"
            << "model:      " << j["model"].get<std::string>() << " (" << j["family"].get<std::string>() << ")\n"
            << "components: ";
  for (size_t i = 0; i < j["components"].size(); i++) std::cout << (i ? ", " : "") << j["components"][i].get<std::string>();
  std::cout << "\nvariant:    " << j["variant"].get<std::string>() << " (the default here, as load() picks it)\n"
            << "device:     " << j["device"].get<std::string>() << "\n"
            << (j["embed_dim"].get<size_t>() ? "embed dim:  " + j["embed_dim"].dump() + "\n" : std::string())
            << "verified:   " << j["verified"].size() << " files match their sha256\n"
            << j["backend"].get<std::string>() << " " << j["library_version"].get<std::string>() << ": "
            << j["library"].get<std::string>() << "\n";
  return 0;
}

int cmd_embed(const Args& a) {
  if (a.positional.size() > 1) throw UsageError("embed takes one bundle; give images with --image PATH");
  if (a.images.empty() && a.texts.empty())
    throw mmdeploy::Error(MMRT_ERR_INVALID_ARGUMENT, "give --image PATH and/or --text STR");
  mmdeploy::Model m(a.bundle, a.open);
  std::vector<std::vector<float>> img, txt;
  if (!a.images.empty()) {
    std::vector<mmdeploy::Image> ims;
    for (auto& p : a.images) ims.push_back(mmdeploy::Image::file(p));
    img = m.embed_images(ims);
  }
  if (!a.texts.empty()) txt = m.embed_texts(a.texts);
  if (a.as_json) {
    json out = json::object();
    if (!a.images.empty()) {
      out["images"] = json::array();
      for (size_t i = 0; i < img.size(); i++) out["images"].push_back({{"path", a.images[i]}, {"embedding", img[i]}});
    }
    if (!a.texts.empty()) {
      out["texts"] = json::array();
      for (size_t i = 0; i < txt.size(); i++) out["texts"].push_back({{"text", a.texts[i]}, {"embedding", txt[i]}});
    }
    std::cout << out.dump() << "\n";
    return 0;
  }
  json info = json::parse(m.info_json());
  printf("variant: %s\n", info["variant"].get<std::string>().c_str());
  auto show = [](const char* kind, const std::string& name, const std::vector<float>& v) {
    printf("%s %s: dim %zu, [", kind, py_quote(name).c_str(), v.size());
    for (size_t i = 0; i < 4 && i < v.size(); i++) printf("%s%.4f", i ? ", " : "", v[i]);
    printf(", ...]\n");
  };
  for (size_t i = 0; i < img.size(); i++) show("image", a.images[i], img[i]);
  for (size_t i = 0; i < txt.size(); i++) show("text", a.texts[i], txt[i]);
  if (!img.empty() && !txt.empty()) {
    printf("cosine similarity (rows: images, columns: texts)\n");
    for (size_t i = 0; i < img.size(); i++) {
      printf("  %s:", a.images[i].c_str());
      for (auto& t : txt) {
        float dot = 0;
        for (size_t k = 0; k < t.size(); k++) dot += img[i][k] * t[k];
        printf("  %+.4f", dot);
      }
      printf("\n");
    }
  }
  return 0;
}

int cmd_classify(const Args& a) {
  if (a.positional.size() != 2) throw UsageError("classify takes a bundle and one image");
  if (!a.labels_given) throw UsageError("classify needs --labels \"a,b,c\"");
  auto labels = parse_labels(a.labels);
  mmdeploy::Model m(a.bundle, a.open);
  auto scores = m.classify(mmdeploy::Image::file(a.positional[1]), labels, a.prompt_template);
  if (a.as_json) {
    json out = {{"labels", json::array()}};
    for (auto& s : scores) out["labels"].push_back({{"label", s.label}, {"score", s.score}});
    std::cout << out.dump() << "\n";
    return 0;
  }
  for (size_t i = 0; i < scores.size() && (int)i < a.top; i++) printf("%6.2f%%  %s\n", scores[i].score * 100, scores[i].label.c_str());
  return 0;
}

mmdeploy::GenerateOptions generate_options(const Args& a) {
  mmdeploy::GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.num_beams = a.num_beams;
  o.prompt = a.prompt;
  return o;
}

int cmd_caption(const Args& a) {
  if (a.positional.size() < 2) throw UsageError("caption takes a bundle and IMAGE files");
  if (!a.questions.empty()) throw UsageError("caption takes no questions (-q is for vqa)");
  std::vector<std::string> paths(a.positional.begin() + 1, a.positional.end());
  mmdeploy::Model m(a.bundle, a.open);
  std::vector<mmdeploy::Image> ims;
  for (auto& p : paths) ims.push_back(mmdeploy::Image::file(p));
  auto o = generate_options(a);
  if (a.stream && !a.as_json)  // each row's text so far on stderr, as it grows
    o.on_text = [&](size_t i, int64_t, const std::string& text) {
      fprintf(stderr, "%s\t%s\n", paths[i].c_str(), text.c_str());
      return true;
    };
  auto got = m.caption(ims, o);
  if (a.as_json) {
    json out = {{"captions", json::array()}};
    for (size_t i = 0; i < got.size(); i++) {
      json row = {{"path", paths[i]}, {"text", got[i].text}};
      if (a.with_ids) row["ids"] = got[i].ids;
      out["captions"].push_back(row);
    }
    std::cout << out.dump() << "\n";
    return 0;
  }
  for (size_t i = 0; i < got.size(); i++) printf("%s\t%s\n", paths[i].c_str(), got[i].text.c_str());
  return 0;
}

int cmd_vqa(const Args& a) {
  if (a.positional.size() < 2) throw UsageError("vqa takes a bundle and IMAGE files");
  if (a.questions.empty()) throw UsageError("vqa needs a question: -q \"what is in the picture?\"");
  std::vector<std::string> paths(a.positional.begin() + 1, a.positional.end()), qs = a.questions;
  // vqa.py _pairs: one question for every image, one image for every question, or one each
  if (qs.size() == 1 && paths.size() > 1) qs.assign(paths.size(), qs[0]);
  else if (paths.size() == 1 && qs.size() > 1) paths.assign(qs.size(), paths[0]);
  else if (paths.size() != qs.size())
    throw mmdeploy::Error(MMRT_ERR_INVALID_ARGUMENT, std::to_string(paths.size()) + " images and " + std::to_string(qs.size()) +
                                                         " questions: give one question per image, one question for all, "
                                                         "or one image for all");
  mmdeploy::Model m(a.bundle, a.open);
  std::vector<mmdeploy::Image> ims;
  for (auto& p : paths) ims.push_back(mmdeploy::Image::file(p));
  auto got = m.answer(ims, qs, generate_options(a));
  if (a.as_json) {
    json out = {{"answers", json::array()}};
    for (size_t i = 0; i < got.size(); i++) {
      json row = {{"path", paths[i]}, {"question", qs[i]}, {"answer", got[i].text}};
      if (a.with_ids) row["ids"] = got[i].ids;
      out["answers"].push_back(row);
    }
    std::cout << out.dump() << "\n";
    return 0;
  }
  for (size_t i = 0; i < got.size(); i++) printf("%s\t%s\t%s\n", paths[i].c_str(), qs[i].c_str(), got[i].text.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse(argc, argv);
    if (a.command == "info") return cmd_info(a);
    if (a.command == "embed") return cmd_embed(a);
    if (a.command == "classify") return cmd_classify(a);
    if (a.command == "caption") return cmd_caption(a);
    if (a.command == "vqa" || a.command == "answer") return cmd_vqa(a);
    throw UsageError("unknown command " + a.command + ": choose info, embed, classify, caption or vqa");
  } catch (const UsageError& e) {
    if (*e.what()) fprintf(stderr, "error: %s\n", e.what());
    fputs(kUsage, stderr);
    return 2;
  } catch (const mmdeploy::Error& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return e.user_error() ? 2 : 1;
  } catch (const std::exception& e) {
    fprintf(stderr, "error: unexpected %s\n", e.what());
    return 1;
  }
}
