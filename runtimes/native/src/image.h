// Images to pixel tensors exactly as the Python runtime makes them (runtimes/images.py and
// runtimes/preprocess.py): decoding with libjpeg-turbo / libpng / libwebp / giflib, RGB conversion
// and alpha over white as PIL does, EXIF orientation, Pillow's resample bit for bit (including
// Pillow 13's choice of which pass runs first), center crop, rescale, normalise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bundle.h"
#include "mmdeploy/runtime.h"

namespace mmrt {

// 8-bit RGB, rows packed.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> data;
};

constexpr long long kDefaultMaxPixels = 40000000;

// Decode encoded bytes (JPEG, PNG, WebP, BMP, GIF first frame); `name` appears in errors
// ("image file x.jpg", "image bytes (123 bytes)"). Throws Error(MMRT_ERR_INPUT).
RgbImage decode_image(const uint8_t* data, size_t size, const std::string& name, long long max_pixels = kDefaultMaxPixels);
RgbImage load_image_file(const std::string& path, long long max_pixels = kDefaultMaxPixels);
// Any mmrt_image (pixels, bytes, file). `index` names it in errors.
RgbImage load_image(const mmrt_image& image, size_t index, long long max_pixels = kDefaultMaxPixels);

// PIL's Image.resize(size, resample, box) on an RGB image; resample: PIL's codes (1 LANCZOS,
// 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING). box: x0, y0, x1, y1 in source pixels (float32 as in PIL).
RgbImage pil_resize(const RgbImage& im, int width, int height, int resample, const float box[4] = nullptr);

// preprocess.py's ImagePreprocessor from a preprocessor_config dict.
struct Preprocessor {
  static Preprocessor from_config(const json& cfg, const std::string& source);
  // One image -> (3, H, W) float32 appended to out (channels first).
  void process(const RgbImage& im, std::vector<float>& out, int& out_h, int& out_w) const;
  // (H, W) of every output, or false when it depends on the input.
  bool fixed_size(int& h, int& w) const;

  bool do_resize = true, do_center_crop = true, do_rescale = true, do_normalize = true;
  int resample = 3;
  int shortest_edge = 0, longest_edge = 0, height = 0, width = 0;  // size (0: absent)
  int crop_h = 224, crop_w = 224;
  double rescale_factor = 1.0 / 255;
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
};

}  // namespace mmrt
