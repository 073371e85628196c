/* Caption / VQA through the C ABI with hostile arguments: NULL images, a NULL path, zero counts
 * and capacities, a too-small text buffer, bad struct sizes, lengths past the position table,
 * the wrong family for the call. Each returns the expected status with a one-line message.
 * Usage: c_api_generate CAPTION_BUNDLE VQA_BUNDLE IMAGE  (exit 0 = all held) */
#include <mmdeploy/runtime.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

static void expect(const char* what, mmrt_status got, mmrt_status want) {
  const char* msg = mmrt_last_error();
  int ok = got == want && (want == MMRT_OK || (msg && msg[0] && !strchr(msg, '\n')));
  printf("%s %s: %s (%s)\n", ok ? "ok  " : "FAIL", what, mmrt_status_name(got), msg ? msg : "(null)");
  if (!ok) failures++;
}

static void check(const char* what, int ok) {
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) failures++;
}

struct seen {
  int calls, results;
  size_t ids;
};

static int stop_at_first(void* user, size_t index, int64_t token, const char* text) {
  (void)index, (void)token, (void)text;
  ((struct seen*)user)->calls++;
  return 1; /* end this row now */
}

static void on_result(void* user, size_t index, const int64_t* ids, size_t count, const char* text) {
  (void)index, (void)ids, (void)text;
  ((struct seen*)user)->results++;
  ((struct seen*)user)->ids = count;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: c_api_generate CAPTION_BUNDLE VQA_BUNDLE IMAGE\n");
    return 2;
  }
  mmrt_model *cap = NULL, *vqa = NULL;
  /* ONNX Runtime named: the default variant would load OpenVINO to ask its CPU plugin, and
   * OpenVINO's TBB cannot load under ASan (RTLD_DEEPBIND) */
  mmrt_open_options o;
  mmrt_open_options_init(&o);
  o.backend = "onnxruntime";
  o.precision = "fp32";
  expect("open caption", mmrt_model_open(argv[1], &o, &cap), MMRT_OK);
  expect("open vqa", mmrt_model_open(argv[2], &o, &vqa), MMRT_OK);
  if (!cap || !vqa) return 1;
  mmrt_image file;
  mmrt_image_init(&file);
  file.kind = MMRT_IMAGE_FILE;
  file.path = argv[3];
  mmrt_image no_path;
  mmrt_image_init(&no_path);
  no_path.kind = MMRT_IMAGE_FILE;
  mmrt_generate_options g;
  mmrt_generate_options_init(&g);
  char buf[256], small[2];
  char* texts[1] = {buf};
  char* small_texts[1] = {small};
  char* null_texts[1] = {NULL};

  expect("caption", mmrt_caption(cap, &file, 1, &g, texts, sizeof buf), MMRT_OK);
  expect("caption NULL model", mmrt_caption(NULL, &file, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("caption NULL images", mmrt_caption(cap, NULL, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("caption NULL path", mmrt_caption(cap, &no_path, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("caption zero count", mmrt_caption(cap, &file, 0, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("caption zero capacity", mmrt_caption(cap, &file, 1, &g, texts, 0), MMRT_ERR_INVALID_ARGUMENT);
  expect("caption NULL texts", mmrt_caption(cap, &file, 1, &g, NULL, 0), MMRT_ERR_INVALID_ARGUMENT);
  expect("caption NULL text", mmrt_caption(cap, &file, 1, &g, null_texts, 16), MMRT_ERR_INVALID_ARGUMENT);
  if (strlen(buf) >= sizeof small)
    expect("caption too-small text", mmrt_caption(cap, &file, 1, &g, small_texts, sizeof small), MMRT_ERR_BUFFER_TOO_SMALL);
  g.max_new_tokens = 100000;
  expect("caption past the positions", mmrt_caption(cap, &file, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  g.max_new_tokens = -3;
  expect("caption negative max_new_tokens", mmrt_caption(cap, &file, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  g.max_new_tokens = 0;
  g.num_beams = 17;
  expect("caption 17 beams", mmrt_caption(cap, &file, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  g.num_beams = 0;
  g.prompt = "\xff\xfe";
  expect("caption prompt not UTF-8", mmrt_caption(cap, &file, 1, &g, texts, sizeof buf), MMRT_ERR_INPUT);
  g.prompt = NULL;
  g.struct_size = 1;
  expect("caption bad struct_size", mmrt_caption(cap, &file, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  mmrt_generate_options_init(&g);
  /* streaming: the callback ends the row at its first text; on_result takes the ids */
  struct seen s = {0, 0, 0};
  g.on_token = stop_at_first;
  g.on_result = on_result;
  g.user = &s;
  g.num_beams = 1;
  expect("caption streamed, stopped", mmrt_caption(cap, &file, 1, &g, NULL, 0), MMRT_OK);
  check("callback ran at most once, one result", s.calls <= 1 && s.results == 1 && s.ids >= 1);
  mmrt_generate_options_init(&g);

  float emb[8];
  expect("embed on a captioner", mmrt_embed_images(cap, &file, 1, emb, 8), MMRT_ERR_UNSUPPORTED);
  const char* texts_in[] = {"a red circle"};
  expect("embed texts on a captioner", mmrt_embed_texts(cap, texts_in, 1, emb, 8), MMRT_ERR_UNSUPPORTED);
  const char* labels[] = {"a", "b"};
  expect("classify on a captioner", mmrt_classify(cap, &file, labels, 2, "{}", emb, 8), MMRT_ERR_UNSUPPORTED);

  const char* questions[] = {"what color is the shape?"};
  const char* blank[] = {"   "};
  const char* null_q[] = {NULL};
  expect("vqa on a captioner", mmrt_vqa(cap, &file, questions, 1, &g, texts, sizeof buf), MMRT_ERR_UNSUPPORTED);
  expect("caption on a vqa bundle", mmrt_caption(vqa, &file, 1, &g, texts, sizeof buf), MMRT_ERR_UNSUPPORTED);
  expect("vqa", mmrt_vqa(vqa, &file, questions, 1, &g, texts, sizeof buf), MMRT_OK);
  expect("vqa NULL questions", mmrt_vqa(vqa, &file, NULL, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("vqa NULL question", mmrt_vqa(vqa, &file, null_q, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("vqa blank question", mmrt_vqa(vqa, &file, blank, 1, &g, texts, sizeof buf), MMRT_ERR_INPUT);
  expect("vqa NULL image", mmrt_vqa(vqa, NULL, questions, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  expect("vqa zero capacity", mmrt_vqa(vqa, &file, questions, 1, &g, texts, 0), MMRT_ERR_INVALID_ARGUMENT);
  g.prompt = "a picture of";
  expect("vqa with a prompt", mmrt_vqa(vqa, &file, questions, 1, &g, texts, sizeof buf), MMRT_ERR_INVALID_ARGUMENT);
  mmrt_model_close(cap);
  mmrt_model_close(vqa);
  printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
