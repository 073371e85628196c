"""MkDocs hook: render the generated blocks at build time, so the site shows the families of
models.yaml and the results of docs/results/*.json as they are now (docs/gen_results.py keeps
the checked-in Markdown in step for readers of the files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("mmdeploy_docs_gen", Path(__file__).with_name("gen_results.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

BLOCKS = {"results.md": ("results", gen.render_results), "families.md": ("families", gen.render_families)}


def on_page_markdown(markdown, page, config, files):
    if (block := BLOCKS.get(page.file.src_uri)) is not None:
        name, render = block
        markdown = gen.replace_block(markdown, name, render())
    return markdown
