"""The terminal chat of `mmdeploy chat`: turns of a VLM Conversation (runtimes/pipelines/vlm.py),
tokens printed on stdout as they come.

`chat_repl(conv, ...)` runs one turn (`prompt` given) or reads turns from stdin: `/image PATH`
attaches an image to the next turn, `/reset` starts over, Ctrl-D (or Ctrl-C at the prompt) quits.
A bad turn (an unreadable image, a prompt too long) is reported on `err` and the conversation goes on.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError


def chat_repl(conv: Any, *, images: list[str], prompt: str | None, err: Any, **generate: Any) -> None:
    """`conv`: a Conversation (send(text, images=..., stream=True, ...) yields text pieces; reset());
    `images`: for the first turn; `err`: a Rich console for the hint and errors; `generate`: send()'s
    generation options (max_new_tokens, temperature, top_p, seed)."""

    def turn(text: str, imgs: list[str]) -> None:
        for piece in conv.send(text, images=imgs, stream=True, **generate):
            print(piece, end="", flush=True)
        print()

    pending = list(images)
    if prompt is not None:
        turn(prompt, pending)
        return
    err.print("[dim]type a message; /image PATH attaches an image, /reset starts over, Ctrl-D quits[/dim]")
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line.startswith("/image "):
            pending.append(line[7:].strip())
            continue
        if line == "/reset":
            conv.reset()
            pending = []
            continue
        try:
            turn(line, pending)
            pending = []
        except InputError as exc:  # a bad turn is reported; the conversation goes on
            err.print(f"error: {exc}", highlight=False)
