// Test driver: the native decode / resize / preprocess of one image, written raw for tests/test_native.py
// to compare with PIL and runtimes/preprocess.py.
//   mmrt_preprocess decode IMAGE OUT          -> int32 h, w; h*w*3 uint8 (RGB as images.load_image)
//   mmrt_preprocess resize IMAGE W H RESAMPLE OUT -> int32 h, w; uint8 (PIL Image.resize of that RGB)
//   mmrt_preprocess pixels CONFIG.json IMAGE OUT  -> int32 h, w; 3*h*w float32 (preprocess.py)
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "error.h"
#include "image.h"

using namespace mmrt;

static void write(const char* path, int h, int w, const void* data, size_t bytes) {
  FILE* f = fopen(path, "wb");
  if (!f) throw Error(MMRT_ERR_INVALID_ARGUMENT, std::string("cannot write ") + path);
  int32_t hw[2] = {h, w};
  fwrite(hw, sizeof hw, 1, f);
  fwrite(data, 1, bytes, f);
  fclose(f);
}

int main(int argc, char** argv) {
  try {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "decode" && argc == 4) {
      RgbImage im = load_image_file(argv[2]);
      write(argv[3], im.height, im.width, im.data.data(), im.data.size());
    } else if (mode == "resize" && argc == 7) {
      RgbImage im = load_image_file(argv[2]);
      RgbImage out = pil_resize(im, atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
      write(argv[6], out.height, out.width, out.data.data(), out.data.size());
    } else if (mode == "pixels" && argc == 5) {
      std::ifstream f(argv[2]);
      std::stringstream ss;
      ss << f.rdbuf();
      Preprocessor p = Preprocessor::from_config(json::parse(ss.str()), argv[2]);
      std::vector<float> out;
      int h = 0, w = 0;
      p.process(load_image_file(argv[3]), out, h, w);
      write(argv[4], h, w, out.data(), out.size() * sizeof(float));
    } else {
      fprintf(stderr, "usage: mmrt_preprocess decode IMAGE OUT | resize IMAGE W H RESAMPLE OUT | pixels CONFIG IMAGE OUT\n");
      return 2;
    }
  } catch (const Error& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fprintf(stderr, "error: unexpected %s\n", e.what());
    return 1;
  }
  return 0;
}
