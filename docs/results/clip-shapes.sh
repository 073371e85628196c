# measured 2026-12-06 on the shared 2-core development VM (AMD EPYC, AVX2), busy: other sessions' builds and tests ran beside it
# mmdeploy at commit 4011292 (the export ran at e8f5a3f, which changes no export code); the JSON is bench's own output, unedited
mmdeploy export clip-shapes -o /tmp/cs-docs --precision fp32,int8 --calib shapes
mmdeploy bench /tmp/cs-docs --data shapes --json docs/results/clip-shapes.json
