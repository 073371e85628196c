// Caption images with the C++ wrapper, streaming: each caption is printed as it grows (greedy
// decoding calls back after every token), then the final captions, one "path<TAB>caption" line each.
//   caption_stream BUNDLE IMAGE...
#include <mmdeploy/runtime.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: caption_stream BUNDLE IMAGE...\n");
    return 2;
  }
  try {
    mmdeploy::Model model(argv[1]);
    std::vector<std::string> paths(argv + 2, argv + argc);
    std::vector<mmdeploy::Image> images;
    for (auto& p : paths) images.push_back(mmdeploy::Image::file(p));

    mmdeploy::GenerateOptions options;
    options.num_beams = 1;  // streaming shows every step of greedy decoding
    options.on_text = [&](size_t i, int64_t /*token*/, const std::string& text) {
      fprintf(stderr, "  %s: %s\n", paths[i].c_str(), text.c_str());
      return true;  // false would end this caption here
    };
    std::vector<mmdeploy::Generated> captions = model.caption(images, options);
    for (size_t i = 0; i < captions.size(); i++) printf("%s\t%s\n", paths[i].c_str(), captions[i].text.c_str());
  } catch (const mmdeploy::Error& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return e.user_error() ? 2 : 1;
  }
  return 0;
}
