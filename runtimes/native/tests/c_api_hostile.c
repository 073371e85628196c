/* Hostile calls through the C ABI: NULL pointers, zero counts, bad struct sizes, too-small
 * buffers, a missing bundle, a wrong image. Each must return the expected status with a message,
 * never crash. Usage: c_api_hostile BUNDLE IMAGE  (prints one line per check; exit 0 = all held) */
#include <mmdeploy/runtime.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

static void expect(const char* what, mmrt_status got, mmrt_status want) {
  const char* msg = mmrt_last_error();
  int ok = got == want && (want == MMRT_OK || (msg && msg[0] && !strchr(msg, '\n')));
  printf("%s %s: %s (%s)\n", ok ? "ok  " : "FAIL", what, mmrt_status_name(got), msg ? msg : "(null)");
  if (!ok) failures++;
}

/* as expect, and the message names `words` */
static void expect_says(const char* what, mmrt_status got, mmrt_status want, const char* words) {
  expect(what, got, want);
  if (got != MMRT_OK && !strstr(mmrt_last_error(), words)) {
    printf("FAIL %s: the message does not say \"%s\"\n", what, words);
    failures++;
  }
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: c_api_hostile BUNDLE IMAGE\n");
    return 2;
  }
  mmrt_model* m = (mmrt_model*)0x1;
  expect("open NULL dir", mmrt_model_open(NULL, NULL, &m), MMRT_ERR_INVALID_ARGUMENT);
  if (m != NULL) {
    printf("FAIL open did not clear *model\n");
    failures++;
  }
  expect("open NULL out", mmrt_model_open(argv[1], NULL, NULL), MMRT_ERR_INVALID_ARGUMENT);
  expect("open missing bundle", mmrt_model_open("/nonexistent/bundle", NULL, &m), MMRT_ERR_BUNDLE);
  mmrt_open_options bad;
  mmrt_open_options_init(&bad);
  bad.struct_size = 3;
  expect("open bad struct_size", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_INVALID_ARGUMENT);
  mmrt_open_options_init(&bad);
  bad.backend = "nosuchbackend";
  expect("open unknown backend", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_INVALID_ARGUMENT);
  mmrt_open_options_init(&bad);
  bad.threads = -4;
  expect("open negative threads", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_INVALID_ARGUMENT);
  mmrt_open_options_init(&bad);
  bad.ort_library = "/nonexistent/libonnxruntime.so";
  expect("open missing ORT library", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_BACKEND);

  /* devices: a GPU provider this (CPU) onnxruntime lacks is a status naming it, never an abort */
  mmrt_open_options_init(&bad);
  bad.device = "cuda";
  expect_says("open device cuda", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_BACKEND, "no CUDA execution provider");
  bad.device = "tensorrt:1";
  expect_says("open device tensorrt", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_BACKEND, "no TensorRT execution provider");
  bad.device = "warp-drive";
  expect_says("open unknown device", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_INVALID_ARGUMENT, "unknown device");
  bad.device = "cuda:x";
  expect_says("open device cuda:x", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_INVALID_ARGUMENT, "cuda:N");
  bad.device = "cuda";
  bad.backend = "openvino";
  expect_says("open openvino on cuda", mmrt_model_open(argv[1], &bad, &m), MMRT_ERR_INVALID_ARGUMENT, "OpenVINO takes");
  /* an older caller's struct (no device field): the library does not read past struct_size */
  mmrt_open_options_init(&bad);
  bad.struct_size = offsetof(mmrt_open_options, device);
  bad.device = "warp-drive";
  expect("open 0.1 struct_size", mmrt_model_open(argv[1], &bad, &m), MMRT_OK);
  mmrt_model_close(m);
  mmrt_open_options_init(&bad);
  bad.device = "CPU";
  expect("open device CPU", mmrt_model_open(argv[1], &bad, &m), MMRT_OK);
  mmrt_model_close(m);

  expect("open", mmrt_model_open(argv[1], NULL, &m), MMRT_OK);
  if (!m) return 1;
  size_t dim = 0;
  expect("embed_dim", mmrt_model_embed_dim(m, &dim), MMRT_OK);
  expect("embed_dim NULL", mmrt_model_embed_dim(m, NULL), MMRT_ERR_INVALID_ARGUMENT);
  expect("embed_dim NULL model", mmrt_model_embed_dim(NULL, &dim), MMRT_ERR_INVALID_ARGUMENT);
  size_t needed = 0;
  expect("info size", mmrt_model_info_json(m, NULL, 0, &needed), MMRT_OK);
  char tiny[4];
  expect("info too small", mmrt_model_info_json(m, tiny, sizeof tiny, &needed), MMRT_ERR_BUFFER_TOO_SMALL);

  float* out = calloc(dim * 4, sizeof(float));
  const char* texts[] = {"a red circle", NULL};
  expect("embed texts NULL list", mmrt_embed_texts(m, NULL, 1, out, dim), MMRT_ERR_INVALID_ARGUMENT);
  expect("embed texts NULL item", mmrt_embed_texts(m, texts, 2, out, 2 * dim), MMRT_ERR_INVALID_ARGUMENT);
  expect("embed texts zero count", mmrt_embed_texts(m, texts, 0, out, dim), MMRT_ERR_INVALID_ARGUMENT);
  expect("embed texts small buffer", mmrt_embed_texts(m, texts, 1, out, dim - 1), MMRT_ERR_BUFFER_TOO_SMALL);
  expect("embed texts NULL out", mmrt_embed_texts(m, texts, 1, NULL, dim), MMRT_ERR_INVALID_ARGUMENT);
  const char* bad_utf8[] = {"caf\xe9"};
  expect("embed texts bad UTF-8", mmrt_embed_texts(m, bad_utf8, 1, out, dim), MMRT_ERR_INPUT);
  expect("embed texts", mmrt_embed_texts(m, texts, 1, out, dim), MMRT_OK);

  mmrt_image im;
  mmrt_image_init(&im);
  im.kind = MMRT_IMAGE_FILE;
  im.path = NULL;
  expect("embed image NULL path", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INVALID_ARGUMENT);
  im.path = "/nonexistent.png";
  expect("embed image missing file", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INPUT);
  im.kind = MMRT_IMAGE_ENCODED;
  im.data = "not an image at all";
  im.size = 19;
  expect("embed image garbage bytes", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INPUT);
  static const unsigned char png_head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  im.data = png_head;
  im.size = sizeof png_head;
  expect("embed image truncated PNG", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INPUT);
  im.kind = MMRT_IMAGE_PIXELS;
  im.pixels = NULL;
  expect("embed pixels NULL", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INVALID_ARGUMENT);
  unsigned char px[2 * 2 * 4] = {0};
  im.pixels = px;
  im.width = 2, im.height = 2, im.format = MMRT_PIXEL_RGBA8, im.stride = 3;
  expect("embed pixels short stride", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INVALID_ARGUMENT);
  im.stride = 0;
  im.width = 0;
  expect("embed pixels 0 wide", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INPUT);
  im.width = 2;
  im.format = (mmrt_pixel_format)99;
  expect("embed pixels unknown format", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INVALID_ARGUMENT);
  im.format = MMRT_PIXEL_RGBA8;
  expect("embed pixels", mmrt_embed_images(m, &im, 1, out, dim), MMRT_OK);
  im.kind = (mmrt_image_kind)42;
  expect("embed unknown image kind", mmrt_embed_images(m, &im, 1, out, dim), MMRT_ERR_INVALID_ARGUMENT);

  mmrt_image file;
  mmrt_image_init(&file);
  file.kind = MMRT_IMAGE_FILE;
  file.path = argv[2];
  const char* labels[] = {"a red circle", "a blue square", "  "};
  float scores[3];
  expect("classify NULL labels", mmrt_classify(m, &file, NULL, 2, "{}", scores, 3), MMRT_ERR_INVALID_ARGUMENT);
  expect("classify one label", mmrt_classify(m, &file, labels, 1, "{}", scores, 3), MMRT_ERR_INVALID_ARGUMENT);
  expect("classify blank label", mmrt_classify(m, &file, labels, 3, "{}", scores, 3), MMRT_ERR_INVALID_ARGUMENT);
  expect("classify small scores", mmrt_classify(m, &file, labels, 2, "{}", scores, 1), MMRT_ERR_BUFFER_TOO_SMALL);
  expect("classify template without {}", mmrt_classify(m, &file, labels, 2, "a photo", scores, 3),
         MMRT_ERR_INVALID_ARGUMENT);
  expect("classify template {x}", mmrt_classify(m, &file, labels, 2, "a {x} photo", scores, 3),
         MMRT_ERR_INVALID_ARGUMENT);
  expect("classify", mmrt_classify(m, &file, labels, 2, "a photo of {}", scores, 3), MMRT_OK);
  mmrt_generate_options g;
  mmrt_generate_options_init(&g);
  char cap[64];
  char* caps[1] = {cap};
  expect("caption on a clip bundle", mmrt_caption(m, &file, 1, &g, caps, sizeof cap), MMRT_ERR_UNSUPPORTED);
  mmrt_model_close(m);
  mmrt_model_close(NULL);
  free(out);
  printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
