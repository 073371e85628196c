"""Build-time tools of the mmdeploy checkout (not in the wheel: pyproject's `packages` leaves them out).

Run from the repository root, e.g. ``python -m tools.fixtures clip-shapes --out fixtures/clip-shapes``.
"""
