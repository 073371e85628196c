/* One model handle used by 8 threads at once gives the serial results, bit for bit.
 * Usage: c_api_threads BUNDLE BACKEND IMAGE...  (BACKEND "-": the default variant; exit 0 = every
 * thread's results equal the serial ones) */
#include <mmdeploy/runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 8
#define ROUNDS 5

static mmrt_model* model;
static mmrt_image* images;
static size_t n_images, dim;
static const char* texts[] = {"a red circle", "a small blue square on the left", "two green triangles"};
static float *serial_img, *serial_txt, serial_scores[3];

static int run_once(float* img, float* txt, float* scores) {
  if (mmrt_embed_images(model, images, n_images, img, n_images * dim) != MMRT_OK) return 1;
  if (mmrt_embed_texts(model, texts, 3, txt, 3 * dim) != MMRT_OK) return 1;
  if (mmrt_classify(model, &images[0], texts, 3, "a photo of {}", scores, 3) != MMRT_OK) return 1;
  return 0;
}

static void* worker(void* arg) {
  long bad = 0;
  float* img = malloc(n_images * dim * sizeof(float));
  float* txt = malloc(3 * dim * sizeof(float));
  float scores[3];
  for (int r = 0; r < ROUNDS; r++) {
    if (run_once(img, txt, scores)) {
      fprintf(stderr, "thread call failed: %s\n", mmrt_last_error());
      bad++;
      continue;
    }
    bad += memcmp(img, serial_img, n_images * dim * sizeof(float)) != 0;
    bad += memcmp(txt, serial_txt, 3 * dim * sizeof(float)) != 0;
    bad += memcmp(scores, serial_scores, sizeof scores) != 0;
  }
  free(img);
  free(txt);
  return (void*)bad;
}

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  mmrt_open_options o;
  mmrt_open_options_init(&o);
  o.threads = 1;
  if (strcmp(argv[2], "-") != 0) o.backend = argv[2], o.precision = "fp32";
  if (mmrt_model_open(argv[1], &o, &model) != MMRT_OK) {
    fprintf(stderr, "open: %s\n", mmrt_last_error());
    return 1;
  }
  mmrt_model_embed_dim(model, &dim);
  n_images = (size_t)argc - 3;
  images = calloc(n_images, sizeof(mmrt_image));
  for (size_t i = 0; i < n_images; i++) {
    mmrt_image_init(&images[i]);
    images[i].kind = MMRT_IMAGE_FILE;
    images[i].path = argv[3 + i];
  }
  serial_img = malloc(n_images * dim * sizeof(float));
  serial_txt = malloc(3 * dim * sizeof(float));
  if (run_once(serial_img, serial_txt, serial_scores)) {
    fprintf(stderr, "serial: %s\n", mmrt_last_error());
    return 1;
  }
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, NULL);
  long mismatches = 0;
  for (int i = 0; i < THREADS; i++) {
    void* r;
    pthread_join(t[i], &r);
    mismatches += (long)r;
  }
  printf("%d threads x %d rounds: %ld mismatches\n", THREADS, ROUNDS, mismatches);
  mmrt_model_close(model);
  return mismatches ? 1 : 0;
}
