#include "image.h"

#include <gif_lib.h>
#include <jpeglib.h>
// jpeglib first: jerror.h needs its types
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "error.h"

namespace mmrt {
namespace {

// -- decoded image before RGB conversion: 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels
struct Decoded {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> data;
  int orientation = 1;  // EXIF
};

std::string with_commas(long long n) {
  std::string s = std::to_string(n), out;
  int c = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    if (c && c % 3 == 0 && *it != '-') out.insert(out.begin(), ',');
    out.insert(out.begin(), *it), c++;
  }
  return out;
}

void check_pixels(long long w, long long h, const std::string& name, long long max_pixels) {
  if (w <= 0 || h <= 0) fail(MMRT_ERR_INPUT, "empty image: " + name + " is " + std::to_string(w) + "x" + std::to_string(h));
  if (max_pixels > 0 && w * h > max_pixels)
    fail(MMRT_ERR_INPUT, "image too large: " + name + " is " + std::to_string(w) + "x" + std::to_string(h) + " = " +
                             with_commas(w * h) + " pixels, the limit is " + with_commas(max_pixels));
}

// EXIF orientation (tag 0x0112 of IFD0) from a TIFF-structured block; 1 when absent or broken.
int exif_orientation(const uint8_t* p, size_t n) {
  if (n < 8) return 1;
  bool le = p[0] == 'I' && p[1] == 'I';
  if (!le && !(p[0] == 'M' && p[1] == 'M')) return 1;
  auto u16 = [&](size_t o) -> unsigned { return o + 2 > n ? 0 : le ? p[o] | p[o + 1] << 8 : p[o] << 8 | p[o + 1]; };
  auto u32 = [&](size_t o) -> size_t {
    if (o + 4 > n) return 0;
    return le ? (size_t)p[o] | (size_t)p[o + 1] << 8 | (size_t)p[o + 2] << 16 | (size_t)p[o + 3] << 24
              : (size_t)p[o] << 24 | (size_t)p[o + 1] << 16 | (size_t)p[o + 2] << 8 | (size_t)p[o + 3];
  };
  size_t ifd = u32(4);
  if (ifd + 2 > n) return 1;
  unsigned count = u16(ifd);
  for (unsigned i = 0; i < count; i++) {
    size_t e = ifd + 2 + 12 * i;
    if (e + 12 > n) break;
    if (u16(e) == 0x0112) {
      unsigned v = u16(e + 8);
      return v >= 1 && v <= 8 ? (int)v : 1;
    }
  }
  return 1;
}

// ImageOps.exif_transpose: the transposition each orientation asks for
Decoded apply_orientation(Decoded d) {
  int o = d.orientation;
  if (o == 1) return d;
  const int W = d.width, H = d.height, C = d.channels;
  bool swap = o >= 5;
  Decoded out;
  out.channels = C;
  out.width = swap ? H : W;
  out.height = swap ? W : H;
  out.data.resize((size_t)out.width * out.height * C);
  for (int y = 0; y < out.height; y++)
    for (int x = 0; x < out.width; x++) {
      int sx = 0, sy = 0;
      switch (o) {
        case 2: sx = W - 1 - x, sy = y; break;              // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x, sy = H - 1 - y; break;      // ROTATE_180
        case 4: sx = x, sy = H - 1 - y; break;              // FLIP_TOP_BOTTOM
        case 5: sx = y, sy = x; break;                      // TRANSPOSE
        case 6: sx = y, sy = H - 1 - x; break;              // ROTATE_270
        case 7: sx = W - 1 - y, sy = H - 1 - x; break;      // TRANSVERSE
        case 8: sx = W - 1 - y, sy = x; break;              // ROTATE_90
      }
      memcpy(&out.data[((size_t)y * out.width + x) * C], &d.data[((size_t)sy * W + sx) * C], C);
    }
  return out;
}

#define SHIFTFORDIV255(a) ((((a) >> 8) + (a)) >> 8)

// images.py to_rgb: alpha composited over opaque white (Image.alpha_composite), else convert("RGB")
RgbImage to_rgb(const Decoded& d) {
  RgbImage out;
  out.width = d.width, out.height = d.height;
  const size_t n = (size_t)d.width * d.height;
  out.data.resize(n * 3);
  const uint8_t* s = d.data.data();
  uint8_t* o = out.data.data();
  for (size_t i = 0; i < n; i++, o += 3) {
    uint32_t r, g, b, a = 255;
    switch (d.channels) {
      case 1: r = g = b = s[i]; break;
      case 2: r = g = b = s[2 * i], a = s[2 * i + 1]; break;
      case 3: r = s[3 * i], g = s[3 * i + 1], b = s[3 * i + 2]; break;
      default: r = s[4 * i], g = s[4 * i + 1], b = s[4 * i + 2], a = s[4 * i + 3]; break;
    }
    if (d.channels == 2 || d.channels == 4) {
      if (a == 0) {
        r = g = b = 255;
      } else {  // AlphaComposite.c with dst = (255, 255, 255, 255), PRECISION_BITS 7
        uint32_t blend = 255 * (255 - a);
        uint32_t outa255 = a * 255 + blend;
        uint32_t coef1 = a * 255 * 255 * (1 << 7) / outa255;
        uint32_t coef2 = 255 * (1 << 7) - coef1;
        r = SHIFTFORDIV255(r * coef1 + 255 * coef2 + (0x80 << 7)) >> 7;
        g = SHIFTFORDIV255(g * coef1 + 255 * coef2 + (0x80 << 7)) >> 7;
        b = SHIFTFORDIV255(b * coef1 + 255 * coef2 + (0x80 << 7)) >> 7;
      }
    }
    o[0] = (uint8_t)r, o[1] = (uint8_t)g, o[2] = (uint8_t)b;
  }
  return out;
}

// -- JPEG (libjpeg-turbo, as PIL: islow DCT, fancy upsampling) ---------------------------------

struct JpegErr {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings are quiet, except running out of data: PIL refuses a truncated JPEG ("image file is
// truncated") where libjpeg would pad it with grey.
void jpeg_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
    snprintf(err->message, sizeof err->message, "image file is truncated");
    longjmp(err->jump, 1);
  }
}

Decoded decode_jpeg(const uint8_t* data, size_t size, const std::string& name, long long max_pixels) {
  jpeg_decompress_struct cinfo;
  JpegErr err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_warning;
  // everything a longjmp may leave behind is owned from before setjmp (its destructors then run)
  auto out = std::make_unique<Decoded>();
  auto raw_owner = std::make_unique<std::vector<uint8_t>>();
  Decoded& d = *out;
  std::vector<uint8_t>& raw = *raw_owner;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    fail(MMRT_ERR_INPUT, "cannot read " + name + " (corrupt or truncated): " + err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)size);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
  jpeg_read_header(&cinfo, TRUE);
  try {
    check_pixels(cinfo.image_width, cinfo.image_height, name, max_pixels);
  } catch (const Error& e) {
    jpeg_destroy_decompress(&cinfo);
    throw;
  }
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
      d.orientation = exif_orientation(m->data + 6, m->data_length - 6);
  bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = cmyk ? JCS_CMYK : gray ? JCS_GRAYSCALE : JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  jpeg_start_decompress(&cinfo);
  const int comps = cinfo.output_components;
  d.width = cinfo.output_width, d.height = cinfo.output_height;
  raw.resize((size_t)d.width * d.height * comps);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = &raw[(size_t)cinfo.output_scanline * d.width * comps];
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  bool adobe_inverted = cmyk && cinfo.saw_Adobe_marker;
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (!cmyk) {
    d.channels = comps;
    d.data = std::move(raw);
    return std::move(d);
  }
  // PIL: CMYK (inverted when Adobe wrote it) -> RGB with Convert.c's cmyk2rgb
  d.channels = 3;
  d.data.resize((size_t)d.width * d.height * 3);
  for (size_t i = 0, n = (size_t)d.width * d.height; i < n; i++) {
    int c[4];
    for (int k = 0; k < 4; k++) c[k] = adobe_inverted ? 255 - raw[4 * i + k] : raw[4 * i + k];
    int nk = 255 - c[3];
    for (int k = 0; k < 3; k++) {
      int tmp = c[k] * nk + 128;  // MULDIV255
      int v = nk - (((tmp >> 8) + tmp) >> 8);
      d.data[3 * i + k] = (uint8_t)std::clamp(v, 0, 255);
    }
  }
  return std::move(d);
}

// -- PNG -------------------------------------------------------------------------------------

struct PngRead {
  const uint8_t* data;
  size_t size, pos;
  char message[256];
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngRead*>(png_get_io_ptr(png));
  if (r->pos + n > r->size) png_error(png, "image file is truncated");
  memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

void png_err(png_structp png, png_const_charp msg) {
  auto* r = static_cast<PngRead*>(png_get_error_ptr(png));
  snprintf(r->message, sizeof r->message, "%s", msg);
  png_longjmp(png, 1);
}

void png_warn(png_structp, png_const_charp) {}

Decoded decode_png(const uint8_t* data, size_t size, const std::string& name, long long max_pixels) {
  PngRead r{data, size, 0, {0}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, png_err, png_warn);
  if (!png) fail(MMRT_ERR_OUT_OF_MEMORY, "cannot read " + name + ": out of memory");
  png_infop info = png_create_info_struct(png);
  auto out = std::make_unique<Decoded>();
  auto rows_owner = std::make_unique<std::vector<png_bytep>>();
  Decoded& d = *out;
  std::vector<png_bytep>& rows = *rows_owner;
  auto pixel_error = std::make_unique<std::string>();  // set when the size check fails, before longjmp
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    if (!pixel_error->empty()) fail(MMRT_ERR_INPUT, *pixel_error);
    fail(MMRT_ERR_INPUT, "cannot read " + name + " (corrupt or truncated): " + r.message);
  }
  png_set_read_fn(png, &r, png_read_mem);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  try {
    check_pixels(w, h, name, max_pixels);
  } catch (const Error& e) {
    *pixel_error = e.what();
    png_longjmp(png, 1);
  }
  int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  bool has_trns = png_get_valid(png, info, PNG_INFO_tRNS);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  // PIL keeps a tRNS colour as info["transparency"] (composited), except on 16-bit grey, which
  // images.py turns into a new 8-bit image without it
  if (has_trns && !(color == PNG_COLOR_TYPE_GRAY && depth == 16)) png_set_tRNS_to_alpha(png);
  if (depth == 16) png_set_strip_16(png);  // PIL keeps the high byte (and images.py >> 8)
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  d.width = (int)w, d.height = (int)h;
  d.channels = png_get_channels(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  d.data.resize(rowbytes * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; y++) rows[y] = &d.data[y * rowbytes];
  png_read_image(png, rows.data());
  png_read_end(png, info);
#ifdef PNG_eXIf_SUPPORTED
  png_bytep exif = nullptr;
  png_uint_32 exif_len = 0;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) d.orientation = exif_orientation(exif, exif_len);
#endif
  png_destroy_read_struct(&png, &info, nullptr);
  return std::move(d);
}

// -- WebP ------------------------------------------------------------------------------------

Decoded decode_webp(const uint8_t* data, size_t size, const std::string& name, long long max_pixels) {
  WebPBitstreamFeatures f;
  if (WebPGetFeatures(data, size, &f) != VP8_STATUS_OK) fail(MMRT_ERR_INPUT, "cannot read " + name + ": corrupt WebP header");
  check_pixels(f.width, f.height, name, max_pixels);
  Decoded d;
  d.width = f.width, d.height = f.height, d.channels = f.has_alpha ? 4 : 3;
  d.data.resize((size_t)d.width * d.height * d.channels);
  uint8_t* ok = f.has_alpha ? WebPDecodeRGBAInto(data, size, d.data.data(), d.data.size(), d.width * 4)
                            : WebPDecodeRGBInto(data, size, d.data.data(), d.data.size(), d.width * 3);
  if (!ok) fail(MMRT_ERR_INPUT, "cannot read " + name + " (corrupt or truncated): WebP decoding failed");
  return d;
}

// -- GIF (first frame) -----------------------------------------------------------------------

struct GifMem {
  const uint8_t* data;
  size_t size, pos;
};

int gif_read(GifFileType* g, GifByteType* out, int n) {
  auto* m = static_cast<GifMem*>(g->UserData);
  size_t take = std::min((size_t)n, m->size - m->pos);
  memcpy(out, m->data + m->pos, take);
  m->pos += take;
  return (int)take;
}

Decoded decode_gif(const uint8_t* data, size_t size, const std::string& name, long long max_pixels) {
  GifMem mem{data, size, 0};
  int error = 0;
  GifFileType* g = DGifOpen(&mem, gif_read, &error);
  if (!g) fail(MMRT_ERR_INPUT, "cannot read " + name + ": " + GifErrorString(error));
  struct Close {
    GifFileType* g;
    ~Close() {
      int e;
      DGifCloseFile(g, &e);
    }
  } close{g};
  check_pixels(g->SWidth, g->SHeight, name, max_pixels);
  if (DGifSlurp(g) != GIF_OK)
    fail(MMRT_ERR_INPUT, "cannot read " + name + " (corrupt or truncated): " + GifErrorString(g->Error));
  if (g->ImageCount < 1) fail(MMRT_ERR_INPUT, "cannot read " + name + ": no frames");
  SavedImage& frame = g->SavedImages[0];
  ColorMapObject* cmap = frame.ImageDesc.ColorMap ? frame.ImageDesc.ColorMap : g->SColorMap;
  if (!cmap) fail(MMRT_ERR_INPUT, "cannot read " + name + ": no colour map");
  int transparent = -1;
  for (int i = 0; i < frame.ExtensionBlockCount; i++) {
    GraphicsControlBlock gcb;
    if (frame.ExtensionBlocks[i].Function == GRAPHICS_EXT_FUNC_CODE &&
        DGifExtensionToGCB(frame.ExtensionBlocks[i].ByteCount, frame.ExtensionBlocks[i].Bytes, &gcb) == GIF_OK)
      transparent = gcb.TransparentColor;
  }
  Decoded d;
  d.width = g->SWidth, d.height = g->SHeight, d.channels = transparent >= 0 ? 4 : 3;
  d.data.assign((size_t)d.width * d.height * d.channels, 0);
  int fill = transparent >= 0 ? transparent : g->SBackGroundColor;
  const int fw = frame.ImageDesc.Width, fh = frame.ImageDesc.Height, fl = frame.ImageDesc.Left, ft = frame.ImageDesc.Top;
  for (int y = 0; y < d.height; y++)
    for (int x = 0; x < d.width; x++) {
      int idx = fill;
      if (x >= fl && x < fl + fw && y >= ft && y < ft + fh && frame.RasterBits) idx = frame.RasterBits[(y - ft) * fw + (x - fl)];
      uint8_t* o = &d.data[((size_t)y * d.width + x) * d.channels];
      GifColorType c = idx < cmap->ColorCount ? cmap->Colors[idx] : GifColorType{0, 0, 0};
      o[0] = c.Red, o[1] = c.Green, o[2] = c.Blue;
      if (d.channels == 4) o[3] = idx == transparent ? 0 : 255;
    }
  return d;
}

// -- BMP (uncompressed 24/32-bit and 8-bit palette) --------------------------------------------

Decoded decode_bmp(const uint8_t* p, size_t n, const std::string& name, long long max_pixels) {
  auto u32 = [&](size_t o) -> uint32_t { return o + 4 > n ? 0 : p[o] | p[o + 1] << 8 | p[o + 2] << 16 | (uint32_t)p[o + 3] << 24; };
  auto u16 = [&](size_t o) -> uint32_t { return o + 2 > n ? 0 : p[o] | p[o + 1] << 8; };
  if (n < 54) fail(MMRT_ERR_INPUT, "cannot read " + name + " (corrupt or truncated): short BMP header");
  uint32_t offset = u32(10), header = u32(14);
  int32_t w = (int32_t)u32(18), hraw = (int32_t)u32(22);
  uint32_t bpp = u16(28), compression = u32(30), colors = u32(46);
  bool top_down = hraw < 0;
  long long h = top_down ? -(long long)hraw : hraw;
  check_pixels(w, h, name, max_pixels);
  if (compression != 0 || (bpp != 24 && bpp != 32 && bpp != 8))
    fail(MMRT_ERR_INPUT, "cannot read " + name + ": BMP with " + std::to_string(bpp) + "-bit pixels / compression " +
                             std::to_string(compression) + " is not supported here (24/32-bit or 8-bit palette)");
  size_t stride = (((size_t)w * bpp + 31) / 32) * 4;
  if ((size_t)offset + stride * h > n) fail(MMRT_ERR_INPUT, "cannot read " + name + " (corrupt or truncated): pixel data cut short");
  Decoded d;
  d.width = w, d.height = (int)h, d.channels = 3;
  d.data.resize((size_t)w * h * 3);
  size_t pal = 14 + header;
  if (bpp == 8 && colors == 0) colors = 256;
  for (long long y = 0; y < h; y++) {
    const uint8_t* row = p + offset + stride * (top_down ? y : h - 1 - y);
    for (int x = 0; x < w; x++) {
      uint8_t* o = &d.data[((size_t)y * w + x) * 3];
      if (bpp == 8) {
        uint32_t i = row[x];
        size_t e = pal + 4 * (size_t)i;
        if (i >= colors || e + 3 > n) fail(MMRT_ERR_INPUT, "cannot read " + name + ": palette index out of range");
        o[0] = p[e + 2], o[1] = p[e + 1], o[2] = p[e];
      } else {
        const uint8_t* s = row + (size_t)x * (bpp / 8);
        o[0] = s[2], o[1] = s[1], o[2] = s[0];  // BGR(X): PIL ignores the 4th byte of BI_RGB
      }
    }
  }
  return d;
}

std::vector<uint8_t> read_all(const std::string& path) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) {
    if (errno == ENOENT) fail(MMRT_ERR_INPUT, "image file not found: " + path);
    fail(MMRT_ERR_INPUT, "cannot open image file " + path + ": " + strerror(errno));
  }
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  bool bad = ferror(f);
  int e = errno;
  fclose(f);
  if (bad) {
    if (e == EISDIR) fail(MMRT_ERR_INPUT, "image path is a directory, not a file: " + path);
    fail(MMRT_ERR_INPUT, "cannot open image file " + path + ": " + strerror(e));
  }
  return out;
}

// -- Pillow's resample (src/libImaging/Resample.c), 8 bits per channel -------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;

double filter_bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
double filter_bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}
double filter_box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
double filter_hamming(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return sin(x) / x * (0.54f + 0.46f * cos(x));
}
double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return sin(x) / x;
}
double filter_lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // xmin, count per output pixel
  std::vector<int32_t> k;   // fixed point, ksize per output pixel
};

Coeffs precompute(int in_size, float in0, float in1, int out_size, double (*filter)(double), double support_base) {
  double scale = (double)(in1 - in0) / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support_base * filterscale;
  Coeffs c;
  c.ksize = (int)ceil(support) * 2 + 1;
  c.bounds.resize(out_size * 2);
  c.k.assign((size_t)out_size * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; x++) {
      w[x] = filter((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; x++) {
      double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[(size_t)xx * c.ksize + x] = v < 0 ? (int)(-0.5 + v * (1 << kPrecisionBits)) : (int)(0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[xx * 2] = xmin, c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int v) {
  v >>= kPrecisionBits;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

// out: width out_w, rows [row0, row0 + rows) of in
RgbImage pass_horizontal(const RgbImage& in, const Coeffs& c, int out_w, int row0, int rows) {
  RgbImage out;
  out.width = out_w, out.height = rows;
  out.data.resize((size_t)out_w * rows * 3);
  for (int y = 0; y < rows; y++) {
    const uint8_t* src = &in.data[(size_t)(y + row0) * in.width * 3];
    uint8_t* dst = &out.data[(size_t)y * out_w * 3];
    for (int xx = 0; xx < out_w; xx++) {
      int xmin = c.bounds[xx * 2], n = c.bounds[xx * 2 + 1];
      const int32_t* k = &c.k[(size_t)xx * c.ksize];
      int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < n; x++) {
        const uint8_t* p = src + (size_t)(x + xmin) * 3;
        s0 += p[0] * k[x], s1 += p[1] * k[x], s2 += p[2] * k[x];
      }
      dst[xx * 3] = clip8(s0), dst[xx * 3 + 1] = clip8(s1), dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

// bounds are rows of `in` (already shifted); columns [col0, col0 + cols) of in
RgbImage pass_vertical(const RgbImage& in, const Coeffs& c, int out_h, int col0, int cols) {
  RgbImage out;
  out.width = cols, out.height = out_h;
  out.data.resize((size_t)cols * out_h * 3);
  for (int yy = 0; yy < out_h; yy++) {
    int ymin = c.bounds[yy * 2], n = c.bounds[yy * 2 + 1];
    const int32_t* k = &c.k[(size_t)yy * c.ksize];
    uint8_t* dst = &out.data[(size_t)yy * cols * 3];
    for (int xx = 0; xx < cols; xx++) {
      int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int y = 0; y < n; y++) {
        const uint8_t* p = &in.data[((size_t)(y + ymin) * in.width + xx + col0) * 3];
        s0 += p[0] * k[y], s1 += p[1] * k[y], s2 += p[2] * k[y];
      }
      dst[xx * 3] = clip8(s0), dst[xx * 3 + 1] = clip8(s1), dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

}  // namespace

RgbImage pil_resize(const RgbImage& im, int xsize, int ysize, int resample, const float box_in[4]) {
  double (*filter)(double) = nullptr;
  double support = 0;
  switch (resample) {
    case 1: filter = filter_lanczos, support = 3.0; break;
    case 2: filter = filter_bilinear, support = 1.0; break;
    case 3: filter = filter_bicubic, support = 2.0; break;
    case 4: filter = filter_box, support = 0.5; break;
    case 5: filter = filter_hamming, support = 1.0; break;
    default: fail(MMRT_ERR_BUNDLE, "resample " + std::to_string(resample) + " is not supported by the native runtime (bicubic 3, bilinear 2, lanczos 1, box 4, hamming 5)");
  }
  float box[4] = {0, 0, (float)im.width, (float)im.height};
  if (box_in) std::copy(box_in, box_in + 4, box);
  // Image.resize: same size and whole image -> a copy
  if (xsize == im.width && ysize == im.height && box[0] == 0 && box[1] == 0 && box[2] == im.width && box[3] == im.height)
    return im;
  bool need_h = xsize != im.width || box[0] != 0 || box[2] != xsize;
  bool need_v = ysize != im.height || box[1] != 0 || box[3] != ysize;
  // Pillow 13 (python-pillow#9549): the vertical pass runs first when the height shrinks by more
  // than twice what the width does, measured on the whole input even with a box (found by matching
  // Image.resize on random sizes and on preprocess.py's crop-window box; tests/test_native.py)
  bool vertical_first = ysize < im.height && (long long)(im.height - ysize) > 2LL * (im.width - xsize);
  Coeffs cv = precompute(im.height, box[1], box[3], ysize, filter, support);
  Coeffs ch;
  if (need_h) ch = precompute(im.width, box[0], box[2], xsize, filter, support);
  if (!vertical_first) {
    RgbImage cur = im;
    if (need_h) {
      int first = cv.bounds[0], last = cv.bounds[ysize * 2 - 2] + cv.bounds[ysize * 2 - 1];
      for (int i = 0; i < ysize; i++) cv.bounds[i * 2] -= first;
      cur = pass_horizontal(im, ch, xsize, first, last - first);
    }
    if (need_v) cur = pass_vertical(cur, cv, ysize, 0, cur.width);
    return cur;
  }
  RgbImage cur = need_v ? pass_vertical(im, cv, ysize, 0, im.width) : im;
  if (need_h) cur = pass_horizontal(cur, ch, xsize, 0, cur.height);
  return cur;
}

RgbImage decode_image(const uint8_t* data, size_t size, const std::string& name, long long max_pixels) {
  Decoded d;
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) d = decode_jpeg(data, size, name, max_pixels);
  else if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) d = decode_png(data, size, name, max_pixels);
  else if (size >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0) d = decode_webp(data, size, name, max_pixels);
  else if (size >= 6 && (memcmp(data, "GIF87a", 6) == 0 || memcmp(data, "GIF89a", 6) == 0)) d = decode_gif(data, size, name, max_pixels);
  else if (size >= 2 && data[0] == 'B' && data[1] == 'M') d = decode_bmp(data, size, name, max_pixels);
  else fail(MMRT_ERR_INPUT, "cannot read " + name + ": not a supported image format (PNG, JPEG, GIF, BMP, WEBP)");
  return to_rgb(apply_orientation(std::move(d)));
}

RgbImage load_image_file(const std::string& path, long long max_pixels) {
  auto bytes = read_all(path);
  return decode_image(bytes.data(), bytes.size(), "image file " + path, max_pixels);
}

RgbImage load_image(const mmrt_image& image, size_t index, long long max_pixels) {
  const std::string where = "images[" + std::to_string(index) + "]";
  // a C caller may store any int in these enums: read them as ints (an out-of-range C++ enum is UB)
  int kind = 0, format = 0;
  memcpy(&kind, &image.kind, sizeof kind);
  memcpy(&format, &image.format, sizeof format);
  switch (kind) {
    case MMRT_IMAGE_FILE:
      if (!image.path) fail(MMRT_ERR_INVALID_ARGUMENT, where + ".path is NULL");
      return load_image_file(image.path, max_pixels);
    case MMRT_IMAGE_ENCODED:
      if (!image.data || image.size == 0) fail(MMRT_ERR_INVALID_ARGUMENT, where + ": encoded image with no bytes (data NULL or size 0)");
      return decode_image(static_cast<const uint8_t*>(image.data), image.size,
                          where + " image bytes (" + std::to_string(image.size) + " bytes)", max_pixels);
    case MMRT_IMAGE_PIXELS: {
      if (!image.pixels) fail(MMRT_ERR_INVALID_ARGUMENT, where + ".pixels is NULL");
      int channels = 0;
      switch (format) {
        case MMRT_PIXEL_RGB8: case MMRT_PIXEL_BGR8: channels = 3; break;
        case MMRT_PIXEL_RGBA8: case MMRT_PIXEL_BGRA8: channels = 4; break;
        case MMRT_PIXEL_GRAY8: channels = 1; break;
        default: fail(MMRT_ERR_INVALID_ARGUMENT, where + ".format " + std::to_string(format) + " is unknown");
      }
      check_pixels(image.width, image.height, where, max_pixels);
      size_t stride = image.stride ? image.stride : (size_t)image.width * channels;
      if (stride < (size_t)image.width * channels)
        fail(MMRT_ERR_INVALID_ARGUMENT, where + ".stride " + std::to_string(stride) + " is less than width * channels");
      RgbImage out;
      out.width = image.width, out.height = image.height;
      out.data.resize((size_t)image.width * image.height * 3);
      bool bgr = format == MMRT_PIXEL_BGR8 || format == MMRT_PIXEL_BGRA8;
      for (int y = 0; y < image.height; y++) {
        const uint8_t* row = image.pixels + stride * y;
        for (int x = 0; x < image.width; x++) {
          uint8_t* o = &out.data[((size_t)y * image.width + x) * 3];
          const uint8_t* s = row + (size_t)x * channels;
          if (channels == 1) {
            o[0] = o[1] = o[2] = s[0];
            continue;
          }
          uint8_t r = bgr ? s[2] : s[0], g = s[1], b = bgr ? s[0] : s[2];
          if (channels == 4) {  // images.py _from_array: round(alpha * rgb + (1 - alpha) * 255)
            double a = s[3] / 255.0;
            r = (uint8_t)nearbyint(a * r + (1 - a) * 255), g = (uint8_t)nearbyint(a * g + (1 - a) * 255),
            b = (uint8_t)nearbyint(a * b + (1 - a) * 255);
          }
          o[0] = r, o[1] = g, o[2] = b;
        }
      }
      return out;
    }
  }
  fail(MMRT_ERR_INVALID_ARGUMENT, where + ".kind " + std::to_string(kind) + " is unknown");
}

// -- preprocess.py ----------------------------------------------------------------------------

namespace {

constexpr int kMaxSide = 16384;
constexpr long long kFullResizeLimit = 16000000;

int to_int(const json& v, const std::string& what) {
  if (v.is_number_integer()) return (int)std::clamp<long long>(v.get<long long>(), INT_MIN, INT_MAX);
  if (v.is_number_float()) return (int)v.get<double>();  // Python int(3.0)
  if (v.is_string()) {
    try {
      size_t used = 0;
      long long x = std::stoll(v.get<std::string>(), &used);
      if (used == v.get<std::string>().size()) return (int)x;
    } catch (...) {
    }
  }
  throw std::invalid_argument(what);
}

// _size_dict: {"height", "width", "shortest_edge", "longest_edge"} from an int, a pair or a dict
std::map<std::string, int> size_dict(const json& size, bool default_to_square, const std::string& name) {
  std::map<std::string, int> out;
  std::string shown = size.dump();
  if (size.is_boolean()) throw std::invalid_argument(name + " must be an int, a pair or a dict, got " + shown);
  if (size.is_number_integer()) {
    int v = to_int(size, name);
    if (v <= 0) throw std::invalid_argument(name + " must be positive, got " + shown);
    if (default_to_square) out = {{"height", v}, {"width", v}};
    else out = {{"shortest_edge", v}};
  } else if (size.is_array() && size.size() == 2) {
    out = {{"height", to_int(size[0], name + " values must be integers, got " + shown)},
           {"width", to_int(size[1], name + " values must be integers, got " + shown)}};
  } else if (size.is_object()) {
    for (const char* k : {"height", "width", "shortest_edge", "longest_edge"})
      if (size.contains(k) && !size[k].is_null()) out[k] = to_int(size[k], name + " values must be integers, got " + shown);
    if (out.count("height") != out.count("width")) throw std::invalid_argument(name + " needs both height and width, got " + shown);
    if (out.empty() || (out.count("longest_edge") && !out.count("shortest_edge")))
      throw std::invalid_argument(name + " must have height/width or shortest_edge, got " + shown);
    for (auto& [k, v] : out)
      if (v <= 0) throw std::invalid_argument(name + " values must be positive, got " + shown);
  } else {
    throw std::invalid_argument(name + " must be an int, a pair or a dict, got " + shown);
  }
  for (auto& [k, v] : out)
    if (v > kMaxSide) throw std::invalid_argument(name + " values must be at most 16384, got " + shown);
  return out;
}

void triple(const json& v, float out[3], const std::string& name) {
  if (v.is_number() && !v.is_boolean()) {
    out[0] = out[1] = out[2] = (float)v.get<double>();
    return;
  }
  if (!v.is_array()) throw std::invalid_argument(name + " must be a number or 3 numbers (RGB), got " + v.dump());
  if (v.size() != 3) throw std::invalid_argument(name + " must have 3 values (RGB), got " + std::to_string(v.size()));
  for (int i = 0; i < 3; i++) {
    if (!v[i].is_number()) throw std::invalid_argument(name + " must be a number or 3 numbers (RGB), got " + v.dump());
    out[i] = (float)v[i].get<double>();  // float32 constants, as np.array(..., float32)
  }
}

bool truthy(const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.is_null();
}

}  // namespace

Preprocessor Preprocessor::from_config(const json& cfg, const std::string& source) {
  if (!cfg.is_object()) fail(MMRT_ERR_BUNDLE, source + ": must be a JSON object");
  Preprocessor p;
  try {
    bool default_to_square = cfg.contains("default_to_square") && truthy(cfg["default_to_square"]);
    json size = json{{"shortest_edge", 224}};
    if (cfg.contains("size") && !cfg["size"].is_null()) {
      size = cfg["size"];
      if (size.is_number_integer() && default_to_square) size = json{{"height", size}, {"width", size}};
      if (cfg.contains("use_square_size") && truthy(cfg["use_square_size"]) && size.is_object() && size.contains("shortest_edge"))
        size = json{{"height", size["shortest_edge"]}, {"width", size["shortest_edge"]}};
    }
    auto s = size_dict(size, false, "size");
    p.shortest_edge = s.count("shortest_edge") ? s["shortest_edge"] : 0;
    p.longest_edge = s.count("longest_edge") ? s["longest_edge"] : 0;
    p.height = s.count("height") ? s["height"] : 0;
    p.width = s.count("width") ? s["width"] : 0;
    json crop = json{{"height", 224}, {"width", 224}};
    if (cfg.contains("crop_size") && !cfg["crop_size"].is_null()) crop = cfg["crop_size"];
    auto c = size_dict(crop, true, "crop_size");
    auto flag = [&](const char* key, bool& dst) {
      if (cfg.contains(key) && !cfg[key].is_null()) dst = truthy(cfg[key]);
    };
    flag("do_resize", p.do_resize);
    flag("do_center_crop", p.do_center_crop);
    flag("do_rescale", p.do_rescale);
    flag("do_normalize", p.do_normalize);
    if (p.do_center_crop && !(c.count("height") && c.count("width")))
      throw std::invalid_argument("crop_size needs height and width, got " + crop.dump());
    p.crop_h = c.count("height") ? c["height"] : 0;
    p.crop_w = c.count("width") ? c["width"] : 0;
    if (cfg.contains("resample") && !cfg["resample"].is_null()) {
      int r = to_int(cfg["resample"], "unknown PIL resample code " + cfg["resample"].dump());
      if (r < 0 || r > 5) throw std::invalid_argument("unknown PIL resample code " + cfg["resample"].dump());
      p.resample = r;
    }
    if (cfg.contains("rescale_factor") && !cfg["rescale_factor"].is_null()) {
      const json& f = cfg["rescale_factor"];
      if (f.is_number()) p.rescale_factor = f.get<double>();
      else if (f.is_string()) p.rescale_factor = std::stod(f.get<std::string>());
      else throw std::invalid_argument("rescale_factor must be a number, got " + f.dump());
    }
    if (cfg.contains("image_mean") && !cfg["image_mean"].is_null()) triple(cfg["image_mean"], p.mean, "image_mean");
    if (cfg.contains("image_std") && !cfg["image_std"].is_null()) triple(cfg["image_std"], p.std, "image_std");
    for (float v : p.std)
      if (v == 0) throw std::invalid_argument("image_std must not contain 0");
  } catch (const std::invalid_argument& e) {
    fail(MMRT_ERR_BUNDLE, source + ": " + e.what());
  } catch (const std::out_of_range& e) {
    fail(MMRT_ERR_BUNDLE, source + ": a value is out of range");
  }
  if (p.resample == 0) fail(MMRT_ERR_BUNDLE, source + ": resample 0 (nearest) is not supported by the native runtime");
  return p;
}

bool Preprocessor::fixed_size(int& h, int& w) const {
  if (do_center_crop) return h = crop_h, w = crop_w, true;
  if (do_resize && !shortest_edge) return h = height, w = width, true;
  return false;
}

namespace {

std::pair<int, int> size_with_aspect_ratio(int h, int w, int size, int max_size) {
  bool have_raw = false;
  double raw_size = 0, lo = std::min(h, w), hi = std::max(h, w);
  if (hi / lo * size > max_size) {
    raw_size = max_size * lo / hi;
    size = (int)nearbyint(raw_size);  // Python round(): half to even
    have_raw = true;
  }
  if ((h <= w && h == size) || (w <= h && w == size)) return {h, w};
  if (w < h) return {have_raw ? (int)(raw_size * h / w) : (int)((double)size * h / w), size};
  return {size, have_raw ? (int)(raw_size * w / h) : (int)((double)size * w / h)};
}

}  // namespace

void Preprocessor::process(const RgbImage& im, std::vector<float>& out, int& out_h, int& out_w) const {
  const int w = im.width, h = im.height;
  int nh = h, nw = w;
  if (do_resize) {
    if (shortest_edge && longest_edge) {
      std::tie(nh, nw) = size_with_aspect_ratio(h, w, shortest_edge, longest_edge);
    } else if (shortest_edge) {
      int sh = w <= h ? w : h, lg = w <= h ? h : w;
      int new_long = (int)((double)((long long)shortest_edge * lg) / sh);
      if (w <= h) nh = new_long, nw = shortest_edge;
      else nh = shortest_edge, nw = new_long;
    } else {
      nh = height, nw = width;
    }
  }
  RgbImage cur;
  const RgbImage* src = &im;
  bool cropped = false;
  if (do_center_crop) {
    int top = (int)std::floor((nh - crop_h) / 2.0), left = (int)std::floor((nw - crop_w) / 2.0);
    bool inside = top >= 0 && left >= 0 && top + crop_h <= nh && left + crop_w <= nw;
    if (do_resize && inside && (long long)nh * nw > kFullResizeLimit) {
      // only the crop window is resampled (preprocess.py's box path)
      double sx = (double)w / nw, sy = (double)h / nh;
      float box[4] = {(float)(left * sx), (float)(top * sy), (float)((left + crop_w) * sx), (float)((top + crop_h) * sy)};
      cur = pil_resize(im, crop_w, crop_h, resample, box);
      src = &cur;
      cropped = true;
    }
  }
  if (!cropped && do_resize) {
    cur = pil_resize(im, nw, nh, resample);
    src = &cur;
  }
  // center crop with zero padding (_center_crop)
  int H = src->height, W = src->width, oh = H, ow = W, top = 0, left = 0, pad_t = 0, pad_l = 0;
  if (do_center_crop && !cropped) {
    oh = crop_h, ow = crop_w;
    int t = (int)std::floor((H - crop_h) / 2.0), l = (int)std::floor((W - crop_w) / 2.0);
    if (t >= 0 && l >= 0 && t + crop_h <= H && l + crop_w <= W) {
      top = t, left = l;
    } else {
      int ph = std::max(crop_h, H), pw = std::max(crop_w, W);
      pad_t = (int)std::ceil((ph - H) / 2.0), pad_l = (int)std::ceil((pw - W) / 2.0);
      int t2 = t + pad_t, l2 = l + pad_l;
      int r0 = std::max(0, t2), r1 = std::min(ph, t2 + crop_h), c0 = std::max(0, l2), c1 = std::min(pw, l2 + crop_w);
      oh = r1 - r0, ow = c1 - c0;
      // padded[r][c] = src[r - pad_t][c - pad_l] inside, else 0; window starts at (r0, c0)
      top = r0 - pad_t, left = c0 - pad_l;
    }
  }
  out_h = oh, out_w = ow;
  size_t base = out.size(), plane = (size_t)oh * ow;
  out.resize(base + 3 * plane);
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      int sy = y + top, sx = x + left;
      bool in = sy >= 0 && sy < H && sx >= 0 && sx < W;
      for (int ch = 0; ch < 3; ch++) {
        uint8_t v = in ? src->data[((size_t)sy * W + sx) * 3 + ch] : 0;
        float f = do_rescale ? (float)((double)v * rescale_factor) : (float)v;
        if (do_normalize) f = (f - mean[ch]) / std[ch];
        out[base + ch * plane + (size_t)y * ow + x] = f;
      }
    }
}

}  // namespace mmrt
