/* Zero-shot classify every image in a folder with an mmdeploy bundle, through the C ABI.
 *   classify_folder BUNDLE FOLDER "a cat,a dog,a car" ["a photo of {}"]           */
#include <dirent.h>
#include <mmdeploy/runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LABELS 64

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s BUNDLE FOLDER \"label,label,...\" [TEMPLATE]\n", argv[0]);
    return 2;
  }
  const char* labels[MAX_LABELS];
  size_t n = 0;
  for (char* tok = strtok(argv[3], ","); tok && n < MAX_LABELS; tok = strtok(NULL, ",")) labels[n++] = tok;

  mmrt_model* model = NULL;
  if (mmrt_model_open(argv[1], NULL, &model) != MMRT_OK) {  /* NULL options: the default variant */
    fprintf(stderr, "error: %s\n", mmrt_last_error());
    return 2;
  }
  DIR* dir = opendir(argv[2]);
  if (!dir) {
    fprintf(stderr, "error: cannot open folder %s\n", argv[2]);
    mmrt_model_close(model);
    return 2;
  }
  int failed = 0;
  struct dirent* e;
  while ((e = readdir(dir)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", argv[2], e->d_name);
    mmrt_image image;
    mmrt_image_init(&image);
    image.kind = MMRT_IMAGE_FILE;
    image.path = path;
    float scores[MAX_LABELS];
    mmrt_status s = mmrt_classify(model, &image, labels, n, argc > 4 ? argv[4] : "{}", scores, MAX_LABELS);
    if (s != MMRT_OK) {  /* one bad file is reported, the rest still run */
      fprintf(stderr, "%s: %s\n", path, mmrt_last_error());
      failed++;
      continue;
    }
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
      if (scores[i] > scores[best]) best = i;
    printf("%s\t%s\t%.4f\n", e->d_name, labels[best], scores[best]);
  }
  closedir(dir);
  mmrt_model_close(model);
  return failed ? 1 : 0;
}
