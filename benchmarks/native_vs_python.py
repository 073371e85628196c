"""The native runtime (runtimes/native) against the Python runtime, same variant, same run.

    python -m mmdeploy.benchmarks.native_vs_python [--clip DIR] [--caption DIR] [--runs 5] [--json OUT]

Without --clip / --caption it exports the CLIP B/32 and ViT-GPT2 shape twins (random weights,
ONNX Runtime fp32) into --export-dir (default /tmp/mmdeploy-native-bench) once. Figures, each
taken in this one run with the two runtimes interleaved:

- cold start: process start -> first result, and peak RSS (/usr/bin/time -v), of `mmrt embed`
  vs `mmdeploy embed` (image + text, --json) and of a minimal C program vs a minimal Python
  script (open the bundle, embed one image and one text, print);
- per-call overhead beyond the backend session at batch 1: embed one text through the runtime
  minus a bare Run of an ONNX Runtime session on the same token ids (C: a second session of the
  same library through ORT's C API; Python: the pipeline vs its own InferenceSession.run), thread
  CPU time, the median of paired differences (each pair: one of each, order alternating);
- caption: greedy, batch 1, tokens per second of the whole caption call (encoder included),
  C API vs the Python pipeline, the same ids checked.

Everything runs with 1 intra-op thread (all the work on the calling thread, so thread CPU time
is the work done, robust on a shared machine); wall times are printed beside it. The target
ratios are the issue's (#30): cold start <= 25% of Python's, RSS <= 40%, overhead <= 0.1 ms,
captioning >= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("MMRT_BUILD_DIR") or REPO / "build" / "native")
MMRT = BUILD / "mmrt"
TEXT = "a photo of a cat"
VARIANT = ["--backend", "onnxruntime", "--precision", "fp32", "--threads", "1"]

C_BENCH = r"""
/* the native side of benchmarks/native_vs_python.py */
#include <dlfcn.h>
#include <mmdeploy/runtime.h>
#include <onnxruntime_c_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static void die(mmrt_status s, const char* what) {
  if (s) { fprintf(stderr, "%s: %s: %s\n", what, mmrt_status_name(s), mmrt_last_error()); exit(1); }
}
static mmrt_model* open_model(const char* dir) {
  mmrt_open_options o;
  mmrt_open_options_init(&o);
  o.backend = "onnxruntime", o.precision = "fp32", o.threads = 1;
  mmrt_model* m = NULL;
  die(mmrt_model_open(dir, &o, &m), "open");
  return m;
}
static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}
static double median(double* v, int n) { qsort(v, n, sizeof *v, cmp); return v[n / 2]; }

/* min BUNDLE IMAGE TEXT: what a minimal user program does */
static int cmd_min(char** a) {
  mmrt_model* m = open_model(a[0]);
  size_t d = 0;
  die(mmrt_model_embed_dim(m, &d), "dim");
  float* v = malloc(2 * d * sizeof *v);
  mmrt_image im;
  mmrt_image_init(&im);
  im.kind = MMRT_IMAGE_FILE, im.path = a[1];
  die(mmrt_embed_images(m, &im, 1, v, d), "embed image");
  const char* t[] = {a[2]};
  die(mmrt_embed_texts(m, t, 1, v + d, d), "embed text");
  printf("%zu %.6f %.6f\n", d, v[0], v[d]);
  mmrt_model_close(m);
  free(v);
  return 0;
}

typedef struct { const OrtApi* api; OrtSession* s; OrtMemoryInfo* mi; int64_t* ids; int64_t* mask; int64_t shape[2]; const char* out; } Bare;
static void check(const OrtApi* api, OrtStatus* s) {
  if (s) { fprintf(stderr, "ort: %s\n", api->GetErrorMessage(s)); exit(1); }
}
static void bare_run(Bare* b) {
  const OrtApi* api = b->api;
  OrtValue* in[2] = {0, 0};
  OrtValue* out = NULL;
  size_t n = (size_t)(b->shape[0] * b->shape[1]) * sizeof(int64_t);
  check(api, api->CreateTensorWithDataAsOrtValue(b->mi, b->ids, n, b->shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &in[0]));
  check(api, api->CreateTensorWithDataAsOrtValue(b->mi, b->mask, n, b->shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &in[1]));
  const char* names[] = {"input_ids", "attention_mask"};
  check(api, api->Run(b->s, NULL, names, (const OrtValue* const*)in, 2, &b->out, 1, &out));
  api->ReleaseValue(in[0]), api->ReleaseValue(in[1]), api->ReleaseValue(out);
}

/* overhead BUNDLE TEXT ORT_LIBRARY TEXT_ONNX ROUNDS IDS(comma): mmrt_embed_texts vs the bare session */
static int cmd_overhead(char** a) {
  mmrt_model* m = open_model(a[0]);
  size_t d = 0;
  die(mmrt_model_embed_dim(m, &d), "dim");
  float* v = malloc(d * sizeof *v);
  void* h = dlopen(a[2], RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  const OrtApiBase* (*base)(void) = (const OrtApiBase* (*)(void))dlsym(h, "OrtGetApiBase");
  Bare b = {0};
  b.api = base()->GetApi(ORT_API_VERSION);
  const OrtApi* api = b.api;
  OrtEnv* env = NULL;
  OrtSessionOptions* so = NULL;
  check(api, api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "bench", &env));
  check(api, api->CreateSessionOptions(&so));
  check(api, api->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL));
  check(api, api->SetIntraOpNumThreads(so, 1));
  check(api, api->SetInterOpNumThreads(so, 1));
  check(api, api->CreateSession(env, a[3], so, &b.s));
  check(api, api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &b.mi));
  int n = 0;
  b.ids = malloc(1024 * sizeof(int64_t)), b.mask = malloc(1024 * sizeof(int64_t));
  for (char* p = strtok(a[5], ","); p && n < 1024; p = strtok(NULL, ",")) b.ids[n] = atoll(p), b.mask[n++] = 1;
  b.shape[0] = 1, b.shape[1] = n, b.out = "text_embeds";
  const char* t[] = {a[1]};
  /* paired: each iteration times one runtime call and one bare run, so drifts of a shared machine
     hit both; the overhead is the median of the paired differences */
  int k = atoi(a[4]) * 10;
  double *cc = malloc(k * sizeof(double)), *cw = malloc(k * sizeof(double));
  double *bc = malloc(k * sizeof(double)), *bw = malloc(k * sizeof(double));
  double *dc = malloc(k * sizeof(double)), *dw = malloc(k * sizeof(double));
  for (int w = 0; w < 5; w++) die(mmrt_embed_texts(m, t, 1, v, d), "embed"), bare_run(&b);
  for (int i = 0; i < k; i++) {
    double c0 = now(CLOCK_THREAD_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
    if (i % 2) bare_run(&b); else die(mmrt_embed_texts(m, t, 1, v, d), "embed");
    double c1 = now(CLOCK_THREAD_CPUTIME_ID), w1 = now(CLOCK_MONOTONIC);
    if (i % 2) die(mmrt_embed_texts(m, t, 1, v, d), "embed"); else bare_run(&b);
    double c2 = now(CLOCK_THREAD_CPUTIME_ID), w2 = now(CLOCK_MONOTONIC);
    double call_c = i % 2 ? c2 - c1 : c1 - c0, call_w = i % 2 ? w2 - w1 : w1 - w0;
    double bare_c = i % 2 ? c1 - c0 : c2 - c1, bare_w = i % 2 ? w1 - w0 : w2 - w1;
    cc[i] = call_c, cw[i] = call_w, bc[i] = bare_c, bw[i] = bare_w, dc[i] = call_c - bare_c, dw[i] = call_w - bare_w;
  }
  printf("{\"call_cpu\": %.9f, \"call_wall\": %.9f, \"session_cpu\": %.9f, \"session_wall\": %.9f, "
         "\"overhead_cpu\": %.9f, \"overhead_wall\": %.9f, \"n\": %d}\n",
         median(cc, k), median(cw, k), median(bc, k), median(bw, k), median(dc, k), median(dw, k), k);
  mmrt_model_close(m);
  return 0;
}

static size_t g_tokens;
static void on_result(void* user, size_t index, const int64_t* ids, size_t count, const char* text) {
  (void)user, (void)index, (void)text;
  g_tokens = count;
  for (size_t i = 0; i < count; i++) printf("%s%lld", i ? "," : "ids ", (long long)ids[i]);
  printf("\n");
}

static void quiet(void* user, size_t index, const int64_t* ids, size_t count, const char* text) {
  (void)user, (void)index, (void)ids, (void)text;
  g_tokens = count;
}

/* caption BUNDLE IMAGE MAX_NEW_TOKENS RUNS: greedy batch 1 through the C API */
static int cmd_caption(char** a) {
  mmrt_model* m = open_model(a[0]);
  mmrt_image im;
  mmrt_image_init(&im);
  im.kind = MMRT_IMAGE_FILE, im.path = a[1];
  mmrt_generate_options g;
  mmrt_generate_options_init(&g);
  g.max_new_tokens = atoi(a[2]), g.num_beams = 1, g.on_result = on_result;
  int runs = atoi(a[3]);
  double* c = malloc(runs * sizeof(double));
  double* w = malloc(runs * sizeof(double));
  die(mmrt_caption(m, &im, 1, &g, NULL, 0), "caption");  /* warm-up; prints the ids */
  g.on_result = quiet;
  for (int r = 0; r < runs; r++) {
    double c0 = now(CLOCK_THREAD_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
    die(mmrt_caption(m, &im, 1, &g, NULL, 0), "caption");
    c[r] = now(CLOCK_THREAD_CPUTIME_ID) - c0, w[r] = now(CLOCK_MONOTONIC) - w0;
  }
  printf("{\"cpu\": %.9f, \"wall\": %.9f, \"ids\": %zu}\n", median(c, runs), median(w, runs), g_tokens);
  mmrt_model_close(m);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 4 && !strcmp(argv[1], "min")) return cmd_min(argv + 2);
  if (argc > 7 && !strcmp(argv[1], "overhead")) return cmd_overhead(argv + 2);
  if (argc > 5 && !strcmp(argv[1], "caption")) return cmd_caption(argv + 2);
  fprintf(stderr, "usage: bench min|overhead|caption ...\n");
  return 2;
}
"""

PY_MIN = """
import sys
from mmdeploy.runtimes import load
p = load(sys.argv[1], "onnxruntime", "fp32", threads=1)
img = p.embed_images([sys.argv[2]])
txt = p.embed_texts([sys.argv[3]])
print(img.shape[1], float(img[0, 0]), float(txt[0, 0]))
"""


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"native_vs_python: {' '.join(map(str, cmd))[:200]} failed: {(r.stderr or r.stdout).strip()[-400:]}")
    return r


def timed(cmd: list) -> dict:
    """/usr/bin/time -v of one process: wall s, user+sys CPU s, peak RSS MB."""
    r = run(["/usr/bin/time", "-v", *cmd])
    field = dict(
        line.strip().rsplit(": ", 1) for line in r.stderr.splitlines() if line.startswith("\t") and ": " in line
    )
    wall = 0.0
    for part in field["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"):
        wall = wall * 60 + float(part)
    cpu = float(field["User time (seconds)"]) + float(field["System time (seconds)"])
    return {"wall": wall, "cpu": cpu, "rss_mb": int(field["Maximum resident set size (kbytes)"]) / 1024}


def cold_start(pairs: dict[str, list], runs: int) -> dict[str, dict]:
    """Each command run `runs` times, the commands interleaved (one warm-up each: page cache, stamps)."""
    for cmd in pairs.values():
        timed(cmd)
    got: dict[str, list[dict]] = {k: [] for k in pairs}
    for _ in range(runs):
        for name, cmd in pairs.items():
            got[name].append(timed(cmd))
    return {
        k: {m: statistics.median(x[m] for x in v) for m in ("wall", "cpu", "rss_mb")} | {"runs": len(v)}
        for k, v in got.items()
    }


def build_c(work: Path) -> Path:
    ort_inc = next((BUILD / "third_party").glob("onnxruntime/usr/include/onnxruntime"), None)
    if ort_inc is None:
        sys.exit(f"native_vs_python: no onnxruntime_c_api.h under {BUILD}/third_party: run runtimes/native/build.sh")
    src, exe = work / "bench.c", work / "bench"
    src.write_text(C_BENCH)
    cc = shutil.which("cc") or shutil.which("gcc")
    run(
        [cc, "-O2", "-std=gnu11", src, "-o", exe, f"-I{REPO}/runtimes/native/include", f"-I{ort_inc}"]
        + [f"-L{BUILD}", "-lmmdeploy_runtime", "-ldl", f"-Wl,-rpath,{BUILD}"]
    )
    return exe


def export_twins(out: Path) -> tuple[Path, Path]:
    made = []
    for name, sub in (("clip-vit-b32", "b32"), ("vit-gpt2", "vit-gpt2")):
        target = out / sub
        if not (target / "manifest.json").is_file():
            print(f"exporting the {name} twin into {target} (once)", file=sys.stderr)
            run(
                [Path(sys.executable).parent / "mmdeploy", "export", name, "-o", target]
                + ["--backend", "onnxruntime", "--precision", "fp32", "--random-weights"]
            )
        made.append(target)
    return made[0], made[1]


def python_overhead(bundle: Path, rounds: int) -> tuple[dict, list[int]]:
    from mmdeploy.runtimes import load

    p = load(bundle, "onnxruntime", "fp32", threads=1)
    feeds = p.text_inputs([TEXT])
    # the session the pipeline runs, called bare: run_impl is the backend's InferenceSession.run without
    # the feed checks (its private _sess is read only inside runtimes/backends: test_backends)
    sess = p.sessions["text"]
    for _ in range(5):
        p.embed_texts([TEXT]), sess.run_impl(feeds)
    call, bare, diff = ([], []), ([], []), ([], [])
    runs = {True: lambda: p.embed_texts([TEXT]), False: lambda: sess.run_impl(feeds)}
    for i in range(rounds * 10):  # paired, the order alternating, as the C side
        took = {}
        for is_call in (i % 2 == 0, i % 2 != 0):
            c0, w0 = time.thread_time(), time.perf_counter()
            runs[is_call]()
            took[is_call] = (time.thread_time() - c0, time.perf_counter() - w0)
        for j in (0, 1):
            (
                call[j].append(took[True][j]),
                bare[j].append(took[False][j]),
                diff[j].append(took[True][j] - took[False][j]),
            )
    med = statistics.median
    ids = [int(i) for i in feeds["input_ids"][0]]
    if not all(int(x) == 1 for x in feeds["attention_mask"][0]):
        sys.exit("native_vs_python: the text is padded; the bare C session feeds an all-ones mask")
    return {
        "call_cpu": med(call[0]),
        "call_wall": med(call[1]),
        "session_cpu": med(bare[0]),
        "session_wall": med(bare[1]),
        "overhead_cpu": med(diff[0]),
        "overhead_wall": med(diff[1]),
        "n": len(call[0]),
    }, ids


def python_caption(bundle: Path, image: Path, max_new: int, runs: int) -> tuple[dict, list[int]]:
    from mmdeploy.runtimes import load

    p = load(bundle, "onnxruntime", "fp32", threads=1)
    ids = [int(i) for i in p.generate_ids(p.pixel_values([str(image)]), max_new, 1)[0]]
    p.caption([str(image)], max_new_tokens=max_new, num_beams=1)
    cpu, wall = [], []
    for _ in range(runs):
        c0, w0 = time.thread_time(), time.perf_counter()
        p.caption([str(image)], max_new_tokens=max_new, num_beams=1)
        cpu.append(time.thread_time() - c0), wall.append(time.perf_counter() - w0)
    return {"cpu": statistics.median(cpu), "wall": statistics.median(wall), "ids": len(ids)}, ids


def test_image(path: Path) -> Path:
    """A 640x480 JPEG with gradients and noise: the decode and resize work of a camera frame."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], -1)
    rgb = rgb + np.random.default_rng(0).integers(-20, 21, rgb.shape)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def text_onnx(bundle: Path) -> Path:
    from mmdeploy.runtimes.bundle import Bundle

    b = Bundle.open(bundle)
    return b.path(b.find("text", "onnxruntime", "fp32")[0].path)


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "?",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1m": os.getloadavg()[0],
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, help="a clip bundle (default: the B/32 twin, exported once)")
    ap.add_argument("--caption", type=Path, help="a caption bundle (default: the ViT-GPT2 twin)")
    ap.add_argument("--image", type=Path, help="default: a 640x480 JPEG photo-like test image made here")
    ap.add_argument("--export-dir", type=Path, default=Path("/tmp/mmdeploy-native-bench"))
    ap.add_argument("--runs", type=int, default=5, help="cold starts per command")
    ap.add_argument("--rounds", type=int, default=20, help="overhead: rounds of 10 calls each")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--caption-runs", type=int, default=5)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: cold,overhead,generate")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    if not MMRT.is_file():
        sys.exit(f"native_vs_python: {MMRT} is missing: run runtimes/native/build.sh")
    if a.image is not None and not a.image.is_file():
        sys.exit(f"native_vs_python: image {a.image} not found")
    if a.clip is None or a.caption is None:
        clip, cap = export_twins(a.export_dir)
        a.clip, a.caption = a.clip or clip, a.caption or cap
    work = Path(tempfile.mkdtemp(prefix="native-bench-"))
    if a.image is None:
        a.image = test_image(work / "photo.jpg")
    exe = build_c(work)
    py_min = work / "min.py"
    py_min.write_text(PY_MIN)
    info = json.loads(run([MMRT, "info", a.clip, "--json", *VARIANT]).stdout)
    out: dict = {"machine": machine(), "bundles": {"clip": str(a.clip), "caption": str(a.caption)}}
    out["library"] = info["library"]
    out["machine"]["load_1m_start"] = out["machine"].pop("load_1m")

    if "cold" not in skip:
        embed = ["embed", a.clip, "--image", a.image, "--text", TEXT, "--json", *VARIANT]
        out["cold"] = cold_start(
            {
                "mmrt embed": [MMRT, *embed],
                "mmdeploy embed": [Path(sys.executable).parent / "mmdeploy", *embed],
                "minimal C": [exe, "min", a.clip, a.image, TEXT],
                "minimal Python": [sys.executable, py_min, a.clip, a.image, TEXT],
            },
            a.runs,
        )
    if "overhead" not in skip:
        py, ids = python_overhead(a.clip, a.rounds)
        r = run([exe, "overhead", a.clip, TEXT, info["library"], text_onnx(a.clip), a.rounds, ",".join(map(str, ids))])
        out["overhead"] = {"C": json.loads(r.stdout), "Python": py}
    if "generate" not in skip:
        py, py_ids = python_caption(a.caption, a.image, a.max_new_tokens, a.caption_runs)
        r = run([exe, "caption", a.caption, a.image, a.max_new_tokens, a.caption_runs])
        c_ids = [int(x) for x in r.stdout.split("\n")[0].split(" ", 1)[1].split(",")]
        out["generate"] = {"C": json.loads(r.stdout.splitlines()[-1]), "Python": py, "same_ids": c_ids == py_ids}
        out["generate"]["new_tokens"] = len(py_ids) - 1  # batch 1: no padding; the decoder start id excluded
    out["machine"]["load_1m_end"] = os.getloadavg()[0]
    print_table(out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(out: dict) -> None:
    m = out["machine"]
    print(f"# {m['cpu']}, {m['cores']} cores, load {m['load_1m_start']:.1f} -> {m['load_1m_end']:.1f}; {m['os']}")
    print(f"# clip: {out['bundles']['clip']}\n# caption: {out['bundles']['caption']}\n# onnxruntime: {out['library']}")
    rows = []
    if "cold" in out:
        c = out["cold"]
        for native, python in (("mmrt embed", "mmdeploy embed"), ("minimal C", "minimal Python")):
            n, p = c[native], c[python]
            rows.append(
                (f"cold start wall s: {native} / {python}", n["wall"], p["wall"], n["wall"] / p["wall"], "<= 0.25")
            )
            rows.append((f"cold start CPU s: {native} / {python}", n["cpu"], p["cpu"], n["cpu"] / p["cpu"], "<= 0.25"))
            rows.append(
                (f"peak RSS MB: {native} / {python}", n["rss_mb"], p["rss_mb"], n["rss_mb"] / p["rss_mb"], "<= 0.40")
            )
    if "overhead" in out:
        for side in ("C", "Python"):
            o = out["overhead"][side]
            rows.append(
                (
                    f"text embed b1 ms CPU: {side} call / bare session",
                    o["call_cpu"] * 1e3,
                    o["session_cpu"] * 1e3,
                    None,
                    "",
                )
            )
            target = "<= 0.1" if side == "C" else ""
            rows.append(
                (f"overhead per call ms CPU ({side}, paired median)", o["overhead_cpu"] * 1e3, None, None, target)
            )
            rows.append(
                (f"overhead per call ms wall ({side}, paired median)", o["overhead_wall"] * 1e3, None, None, "")
            )
    if "generate" in out:
        cap, n = out["generate"], out["generate"]["new_tokens"]
        c, p = cap["C"], cap["Python"]
        rows.append(("caption tok/s CPU: C / Python", n / c["cpu"], n / p["cpu"], p["cpu"] / c["cpu"], ">= 1.2"))
        rows.append(("caption tok/s wall: C / Python", n / c["wall"], n / p["wall"], p["wall"] / c["wall"], ">= 1.2"))
        rows.append((f"caption ids identical ({n} new tokens)", float(cap["same_ids"]), None, None, ""))
    print(f"{'figure':58} {'native':>10} {'python':>10} {'ratio':>7}  target")
    for name, x, y, r, t in rows:
        fy = f"{y:10.3f}" if y is not None else " " * 10
        fr = f"{r:7.3f}" if r is not None else " " * 7
        print(f"{name:58} {x:10.3f} {fy} {fr}  {t}")


if __name__ == "__main__":
    raise SystemExit(main())
