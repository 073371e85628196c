/* mmdeploy native runtime: the bundles `mmdeploy export` writes, opened from C.
 *
 * C99, opaque handles, create/destroy pairs. Every call returns an mmrt_status; on failure
 * mmrt_last_error() gives a one-line message naming the thing at fault (file, manifest field,
 * input index). No entry point aborts or lets an exception out: failures are statuses.
 *
 * Thread safety
 *   - mmrt_last_error() is thread local: read it on the thread that got the status.
 *   - One mmrt_model may be used from many threads at once for every call that takes a
 *     `const mmrt_model*` or is marked "thread safe" below (embed, classify, info): the backend
 *     sessions are run concurrently and each call keeps its own buffers. Caption and VQA too:
 *     each call keeps its own KV cache.
 *   - mmrt_model_close() must not race with any other call on the same model.
 *   - In short, thread safe: mmrt_last_error, mmrt_status_name, mmrt_version, mmrt_model_open
 *     (backend libraries load under a lock), mmrt_model_info_json, mmrt_model_embed_dim,
 *     mmrt_embed_images, mmrt_embed_texts, mmrt_classify, mmrt_caption, mmrt_vqa. Not:
 *     mmrt_model_close. Checked: tests/c_api_threads.c (8 threads, embed + classify) and
 *     tests/test_native_lib.py (8 Python threads through ctypes mixing embed, classify, caption
 *     greedy and beam 3 on shared handles, ONNX Runtime and OpenVINO): the serial results, bit for bit.
 *   - A future conversation handle (chat) holds a KV cache and is used by one thread at a time.
 *
 * ABI: option and input structs start with `struct_size` (set it with sizeof, or call the
 * *_init function); fields added later go at the end, and the library reads only the fields the
 * caller's struct_size covers.
 */
#ifndef MMDEPLOY_RUNTIME_H
#define MMDEPLOY_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MMRT_API __declspec(dllexport)
#else
#define MMRT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MMRT_API_VERSION 1

typedef enum mmrt_status {
  MMRT_OK = 0,
  MMRT_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, zero count, bad struct_size, bad option value */
  MMRT_ERR_INPUT = 2,            /* an image or text that cannot be used (corrupt, too large, not UTF-8) */
  MMRT_ERR_BUNDLE = 3,           /* missing / corrupt / tampered bundle, manifest schema error */
  MMRT_ERR_BACKEND = 4,          /* backend library missing or too old, session failed */
  MMRT_ERR_UNSUPPORTED = 5,      /* the call does not fit this bundle's family (embed on a captioner) */
  MMRT_ERR_BUFFER_TOO_SMALL = 6, /* caller's output buffer is shorter than needed (see *_needed) */
  MMRT_ERR_OUT_OF_MEMORY = 7,
  MMRT_ERR_NOT_IMPLEMENTED = 8, /* declared for the ABI, not in this build */
  MMRT_ERR_CANCELLED = 9,       /* reserved (caption / vqa callbacks end one row; the call still succeeds) */
  MMRT_ERR_INTERNAL = 10        /* a bug: please report the message */
} mmrt_status;

/* The message of the last failed call on this thread ("" when none). Valid until the next call
 * on this thread. */
MMRT_API const char* mmrt_last_error(void);
/* "MMRT_ERR_BUNDLE" etc. */
MMRT_API const char* mmrt_status_name(mmrt_status status);
/* "0.1.0" (library version) */
MMRT_API const char* mmrt_version(void);

/* ---- opening a bundle ------------------------------------------------------------------ */

typedef struct mmrt_model mmrt_model;

typedef struct mmrt_open_options {
  size_t struct_size;
  const char* backend;     /* "onnxruntime", "openvino" ($MMRT_OPENVINO_LIBRARY or the wheel's
                              libopenvino_c); NULL: the default variant (as Python's load()) */
  const char* precision;   /* "fp32", "int8", ...; NULL: the default variant */
  int32_t threads;         /* intra-op threads; 0: the backend's default (all cores) */
  int32_t verify;          /* 1: hash every file of the bundle now; 0: hash the files used */
  const char* ort_library; /* path of libonnxruntime.so; NULL: $MMRT_ORT_LIBRARY, then the
                              onnxruntime wheel found at build time, then a search */
  /* since 0.2.0 (read only when struct_size covers it) */
  const char* device; /* NULL or "cpu": the CPU. ONNX Runtime: "cuda" or "tensorrt" (":N" picks the
                         GPU; tensorrt falls back to CUDA then CPU per op), which need a GPU build of
                         the library (onnxruntime-gpu, JetPack's; give it as ort_library). OpenVINO:
                         its device name ("CPU", "GPU", "GPU.1", "NPU", "AUTO"). A GPU-only name steers
                         the default variant to the backend that has it. Missing provider / device:
                         MMRT_ERR_BACKEND naming the library; unknown name: MMRT_ERR_INVALID_ARGUMENT. */
} mmrt_open_options;

MMRT_API void mmrt_open_options_init(mmrt_open_options* options);

/* Open a bundle directory. options may be NULL (defaults). On success *model is set; on failure
 * it is NULL. */
MMRT_API mmrt_status mmrt_model_open(const char* bundle_dir, const mmrt_open_options* options, mmrt_model** model);
/* NULL is a no-op. */
MMRT_API void mmrt_model_close(mmrt_model* model);

/* Info as one JSON object: {"family", "model", "bundle", "variant", "backend", "precision", "device",
 * "components", "embed_dim" (0: a caption / vqa bundle), "verified": [files hashed], "library", "library_version" (the
 * backend's)}. Copies up to `capacity`
 * bytes (with the terminating NUL) into buffer; *needed (may be NULL) gets the size required.
 * buffer may be NULL with capacity 0 to ask the size. Thread safe. */
MMRT_API mmrt_status mmrt_model_info_json(const mmrt_model* model, char* buffer, size_t capacity, size_t* needed);
/* Embedding width (floats per item) of embed calls. Thread safe. */
MMRT_API mmrt_status mmrt_model_embed_dim(const mmrt_model* model, size_t* dim);

/* ---- images ------------------------------------------------------------------------------ */

typedef enum mmrt_image_kind {
  MMRT_IMAGE_PIXELS = 0,  /* decoded 8-bit pixels in memory */
  MMRT_IMAGE_ENCODED = 1, /* the bytes of a JPEG / PNG / WebP / BMP / GIF file */
  MMRT_IMAGE_FILE = 2     /* a path to such a file */
} mmrt_image_kind;

typedef enum mmrt_pixel_format {
  MMRT_PIXEL_RGB8 = 0,
  MMRT_PIXEL_BGR8 = 1,
  MMRT_PIXEL_RGBA8 = 2, /* alpha composited onto white, as the Python runtime does */
  MMRT_PIXEL_BGRA8 = 3,
  MMRT_PIXEL_GRAY8 = 4
} mmrt_pixel_format;

typedef struct mmrt_image {
  size_t struct_size;
  mmrt_image_kind kind;
  /* MMRT_IMAGE_PIXELS */
  const uint8_t* pixels;
  int32_t width, height;
  size_t stride; /* bytes from one row to the next; 0: width * channels */
  mmrt_pixel_format format;
  /* MMRT_IMAGE_ENCODED */
  const void* data;
  size_t size;
  /* MMRT_IMAGE_FILE */
  const char* path;
} mmrt_image;

MMRT_API void mmrt_image_init(mmrt_image* image);

/* ---- embeddings and zero-shot classification (clip, siglip, align; texts also text-embedding) */

/* L2-normalised embeddings, row after row, into out (capacity: floats available; needs
 * count * embed_dim). Thread safe. */
MMRT_API mmrt_status mmrt_embed_images(mmrt_model* model, const mmrt_image* images, size_t count, float* out,
                                       size_t capacity);
/* texts: UTF-8, NUL-terminated. Thread safe. */
MMRT_API mmrt_status mmrt_embed_texts(mmrt_model* model, const char* const* texts, size_t count, float* out,
                                      size_t capacity);

/* Zero-shot scores of one image over labels, each prompted with template (one "{}"; NULL: "{}"),
 * as the Python runtime's classify: CLIP / ALIGN softmax over the labels, SigLIP per-label
 * sigmoid. scores[i] belongs to labels[i] (the caller sorts); capacity >= count. Labels are
 * stripped; blank labels are an error here (the Python CLI drops them). Thread safe. */
MMRT_API mmrt_status mmrt_classify(mmrt_model* model, const mmrt_image* image, const char* const* labels,
                                   size_t count, const char* prompt_template, float* scores, size_t capacity);

/* ---- generation: caption (ViT-GPT2, BLIP, GIT) and VQA (BLIP); chat later -------------------
 * As the Python runtime's caption / answer (runtimes/pipelines/caption.py, vqa.py): the same
 * preprocessing, greedy and beam search token for token (runtimes/generate.py, with the bundle's
 * generation config: repetition / length penalties, no_repeat_ngram_size, eos, max_new_tokens
 * checked against the position table), and the text tokenizers' decode(skip_special_tokens=True)
 * stripped. Images go through in batches of 8; the KV cache lives in buffers allocated once per
 * batch (ONNX Runtime: IOBinding writes each step's cache in place; OpenVINO: an own infer request).
 * Thread safe: each call keeps its own cache. */

/* Streaming: called whenever row `index`'s text changes (greedy: after each step; beam search:
 * once, with the result), with the row's newest token id and its whole text so far (UTF-8,
 * NUL-terminated, valid during the call). Return nonzero to end that row there: its text so far
 * is its result (as the Python runtime's on_text returning False). */
typedef int (*mmrt_token_callback)(void* user, size_t index, int64_t token_id, const char* text);

/* Called once per row after generation: its token ids (start ids and prompt included, padding
 * after eos kept: the Python runtime's generate_ids) and its text. Pointers valid during the call. */
typedef void (*mmrt_result_callback)(void* user, size_t index, const int64_t* ids, size_t count, const char* text);

typedef struct mmrt_generate_options {
  size_t struct_size;
  int32_t max_new_tokens; /* 0: the checkpoint's default; past the position table: an error */
  int32_t num_beams;      /* 0: the checkpoint's default; 1: greedy; at most 16 */
  const char* prompt;     /* text the caption continues (BLIP, GIT); NULL or "": none; not for VQA */
  mmrt_token_callback on_token; /* streaming; NULL: none */
  void* user;                   /* passed to both callbacks */
  mmrt_result_callback on_result; /* ids and text of each row; NULL: none */
} mmrt_generate_options;

MMRT_API void mmrt_generate_options_init(mmrt_generate_options* options);

/* One caption per image, written NUL-terminated into texts[i] (capacity bytes each). texts may be
 * NULL with capacity 0 when options->on_result takes the results. A caption longer than capacity
 * is MMRT_ERR_BUFFER_TOO_SMALL (the message names the image and the bytes needed; the texts that
 * fit are written, the others set to ""). A bundle of another family: MMRT_ERR_UNSUPPORTED. */
MMRT_API mmrt_status mmrt_caption(mmrt_model* model, const mmrt_image* images, size_t count,
                                  const mmrt_generate_options* options, char** texts, size_t capacity);
/* One answer per (images[i], questions[i]); the same image (the same path, bytes or pixel pointer)
 * given for several questions is encoded once. Buffers as mmrt_caption. */
MMRT_API mmrt_status mmrt_vqa(mmrt_model* model, const mmrt_image* images, const char* const* questions, size_t count,
                              const mmrt_generate_options* options, char** answers, size_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* MMDEPLOY_RUNTIME_H */
