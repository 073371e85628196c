"""ONNX Runtime's chat graphs with their attention as one contrib op: the decoder's KV cache updated
in place (GroupQueryAttention), the vision tower's attention fused (MultiHeadAttention).

The exported decoder (families/vlm.py) is portable: each layer concatenates past and new K/V into
``present`` and attends over it, so every step copies the whole cache (52 MB a step at 1,100 tokens
on SmolVLM-256M fp32, ~6 ms, and growing with the context). Here each layer's attention becomes one
``com.microsoft.GroupQueryAttention`` node: given past and present bound to one buffer with room to
spare, ORT appends the new positions where they belong and reads only the valid ones (the
onnxruntime-genai layout). The graph keeps the portable graph's inputs and outputs: given past of
length P and no shared buffer, it returns present of length P + T as before, so every caller that
runs it plainly (parity checks, gates) still can.

The cache length each row holds comes from ``position_ids`` (its last position + 1): the chat decodes
one row whose positions run on from its cache, which is what GQA assumes (no left padding).
Torch-free: export and quantize both call it, after a graph is built (quantized graphs keep the
attention matmuls in float, so the same pattern is found in fp32, int8 and int4 graphs).

The vision tower (SigLIP, exported by TorchScript) scales Q and K, multiplies, softmaxes and
multiplies by V per layer: as MultiHeadAttention a tile ran 5% faster at fp32 and 7% at int8
(SmolVLM-256M twin, 2 threads, AVX-512 EPYC, two tiles a call, 4 interleaved runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, require
from .graph import drop_unused_initializers

MS_DOMAIN = "com.microsoft"
PASS_THROUGH = ("Reshape", "Transpose")  # between the attention's last MatMul and the o_proj input


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _scalar(graph, name: str) -> float | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return float(numpy_helper.to_array(init).reshape(-1)[0])
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return float(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])
    return None


def _only(nodes: list, op: str, where: str):
    found = [n for n in nodes if n.op_type == op]
    if len(found) != 1:
        raise ExportError(f"{where}: expected one {op}, found {len(found)}: not the exported attention")
    return found[0]


def fuse_gqa(src: Path, dst: Path, pairs: list[tuple[str, str]], num_heads: int, kv_heads: int) -> int:
    """Write ``src`` with each layer's attention as GroupQueryAttention to ``dst`` (may be ``src``);
    ``pairs`` are the (past, present) names of K then V per layer. External weights stay where they
    are (``dst`` must sit in the folder of ``src``'s weights file). Returns the layers fused."""
    onnx = require("onnx", "export")
    from onnx import helper

    model = onnx.load(str(src), load_external_data=False)
    g = model.graph
    if any(n.op_type == "GroupQueryAttention" for n in g.node):
        raise ExportError(f"{src.name} already runs its attention as GroupQueryAttention")
    cons = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    new_nodes, drop = [], set()

    def add(op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        new_nodes.append(helper.make_node(op, inputs, [name], name=name, domain=domain, **attrs))
        return name

    def const(name: str, value) -> str:
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    # the cache length per row from the positions: seqlens_k = last position (total - 1), and
    # total_sequence_length = the longest row's
    last = add("Gather", ["position_ids", const("gqa.minus_one", np.int64(-1))], "gqa.last_position", axis=1)
    seqlens = add("Cast", [last], "gqa.seqlens_k", to=onnx.TensorProto.INT32)
    longest = add("ReduceMax", [last], "gqa.longest", keepdims=0)
    total = add("Add", [longest, const("gqa.one", np.int64(1))], "gqa.total_int64")
    total = add("Cast", [total], "gqa.total_sequence_length", to=onnx.TensorProto.INT32)
    bsh = const("gqa.bsh", np.asarray([0, 0, -1], np.int64))  # (batch, seq, heads * head_dim)

    layers = len(pairs) // 2
    for i in range(layers):
        (past_k, present_k), (past_v, present_v) = pairs[2 * i], pairs[2 * i + 1]
        where = f"layer {i}"
        cat_k, cat_v = producer.get(present_k), producer.get(present_v)
        if cat_k is None or cat_v is None or cat_k.op_type != "Concat" or cat_v.op_type != "Concat":
            raise ExportError(f"{where}: {present_k} / {present_v} are not Concats of the past and new cache")
        if cat_k.input[0] != past_k or cat_v.input[0] != past_v or len(cat_k.input) != 2:
            raise ExportError(f"{where}: the cache Concat does not take {past_k} first")
        k_new, v_new = cat_k.input[1], cat_v.input[1]  # (batch, kv heads, new, head_dim), K after rotary
        # scores: MatMul(Reshape(q), Transpose(present K)) -> Mul(scale); output: MatMul(probs, present V)
        k_t = _only(cons.get(present_k, []), "Transpose", where)
        scores = _only(cons.get(k_t.output[0], []), "MatMul", where)
        q_view = producer[scores.input[0]]
        if q_view.op_type != "Reshape":
            raise ExportError(f"{where}: the query reaches the scores through {q_view.op_type}, not Reshape")
        q_rot = q_view.input[0]  # (batch, heads, new, head_dim), after rotary
        scale_mul = _only(cons.get(scores.output[0], []), "Mul", where)
        scale = _scalar(g, scale_mul.input[1])
        if scale is None:
            raise ExportError(f"{where}: the attention scale is not a constant")
        out = _only(cons.get(present_v, []), "MatMul", where).output[0]
        while len(cons.get(out, [])) == 1 and cons[out][0].op_type in PASS_THROUGH:
            out = cons[out][0].output[0]  # ends at the o_proj input, (batch, new, heads * head_dim)

        def bsh_of(x: str, tag: str) -> str:
            t = add("Transpose", [x], f"gqa.{i}.{tag}_bsnh", perm=[0, 2, 1, 3])
            return add("Reshape", [t, bsh], f"gqa.{i}.{tag}")

        q, k, v = bsh_of(q_rot, "query"), bsh_of(k_new, "key"), bsh_of(v_new, "value")
        new_nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [q, k, v, past_k, past_v, seqlens, total],
                [out, present_k, present_v],
                name=f"gqa.{i}",
                domain=MS_DOMAIN,
                num_heads=num_heads,
                kv_num_heads=kv_heads,
                scale=scale,
            )
        )
        drop.update({id(cat_k), id(cat_v), id(producer[out])})

    _replace_and_save(model, drop, new_nodes, dst)
    return layers


def _replace_and_save(model, drop: set[int], new_nodes: list, dst: Path) -> None:
    """The graph without the nodes in ``drop`` (by id), with ``new_nodes``, pruned, in order, saved."""
    from onnx import helper, save

    g = model.graph
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept + new_nodes)
    _prune_dead(g)
    _toposort(g)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    save(model, str(dst))


def _prune_dead(graph) -> None:
    """Drop the nodes no graph output depends on (the replaced attention, the causal mask)."""
    producer = {o: n for n in graph.node for o in n.output}
    live, todo = set(), [o.name for o in graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        todo.extend(i for i in node.input if i)
    kept = [n for n in graph.node if id(n) in live]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)


def _toposort(graph) -> None:
    """ONNX wants producers before consumers; the new nodes were appended at the end."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"the fused graph has a cycle or a missing input at {rest[0].name or rest[0].op_type}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def shared_kv_backends(chat: dict | None) -> tuple[str, ...]:
    """The backends a chat manifest asks to run the decoder over one shared cache buffer."""
    return tuple(((chat or {}).get("kv_cache") or {}).get("shared_buffer", ()))


def fuse_chat_decoder(src: Path, dst: Path, chat: dict) -> int:
    """fuse_gqa for a chat bundle's decoder, its heads and cache names from the manifest's ``chat``."""
    from ..runtimes.pipelines.vlm import cache_pairs, query_heads

    return fuse_gqa(src, dst, cache_pairs(int(chat["num_layers"])), query_heads(chat), int(chat["num_kv_heads"]))


def fuse_mha(src: Path, dst: Path, num_heads: int) -> int:
    """Write ``src`` with each Softmax attention, Softmax(MatMul(q * a, k * b) * c) @ v (each scale
    optional) between the projections' (batch, tokens, hidden) outputs and the output projection,
    as one com.microsoft.MultiHeadAttention (scale a * b * c) to ``dst``. Returns the attentions fused."""
    onnx = require("onnx", "export")
    from onnx import helper

    model = onnx.load(str(src), load_external_data=False)
    g = model.graph
    cons = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}

    def up(name: str, *ops: str) -> str:
        """The input reached back through these producers, each by its first input."""
        for op in ops:
            node = producer.get(name)
            if node is None or node.op_type != op:
                raise ExportError(f"{where}: expected {op} before {name}, found {node.op_type if node else 'an input'}")
            name = node.input[0]
        return name

    new_nodes, drop = [], set()
    for i, softmax in enumerate([n for n in g.node if n.op_type == "Softmax"]):
        where = f"attention {i}"
        scale = 1.0

        def unscaled(name: str) -> str:
            """Past a Mul by a constant (the exporter scales the scores, or Q and K each by its root)."""
            nonlocal scale
            node = producer.get(name)
            if node is not None and node.op_type == "Mul" and (c := _scalar(g, node.input[1])) is not None:
                scale *= c
                return node.input[0]
            return name

        scores = producer.get(unscaled(softmax.input[0]))
        if scores is None or scores.op_type != "MatMul":
            raise ExportError(f"{where}: the Softmax does not read a MatMul: not the exported vision attention")
        q, k = (up(unscaled(x), "Transpose", "Reshape") for x in scores.input)
        probs = softmax.output[0]
        while len(cons.get(probs, [])) == 1 and cons[probs][0].op_type == "Cast":  # eager: softmax in fp32, cast back
            probs = cons[probs][0].output[0]
        out_mm = _only(cons.get(probs, []), "MatMul", where)
        v = up(out_mm.input[1], "Transpose", "Reshape")
        out = out_mm.output[0]
        while True:  # to the (batch, tokens, hidden) the output projection reads
            nxt = [n for n in cons.get(out, []) if n.op_type in PASS_THROUGH]
            if not nxt:
                break
            out = nxt[0].output[0]
        if out == out_mm.output[0]:
            raise ExportError(f"{where}: no Transpose / Reshape after the attention's last MatMul")
        new_nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [q, k, v],
                [out],
                name=f"mha.{i}",
                domain=MS_DOMAIN,
                num_heads=num_heads,
                scale=float(scale),
            )
        )
        drop.add(id(producer[out]))
    if not new_nodes:
        raise ExportError(f"{src.name} has no Softmax attention to fuse")
    _replace_and_save(model, drop, new_nodes, dst)
    return len(new_nodes)


def has_op(path: Path, op: str) -> bool:
    """Whether the graph at ``path`` has an ``op`` node (a graph the pass already wrote)."""
    onnx = require("onnx", "export")
    return any(n.op_type == op for n in onnx.load(str(path), load_external_data=False).graph.node)


@dataclass
class GraphPass:
    """What export and quantize do to one component's ONNX Runtime graphs, as the manifest declares."""

    op: str  # the contrib op the pass writes (its stage's name)
    run: Callable[[Path, Path], int]  # (src, dst) -> what it fused
    suffix: str  # the fp32 graph's name beside the portable one: decoder.gqa.onnx
    runtime: dict[str, Any] = field(default_factory=dict)  # the artifact's open() options


def ort_graph_pass(chat: dict | None, component: str, backend: str) -> GraphPass | None:
    """The pass a chat bundle's manifest asks for on this component and backend, or None."""
    from ..runtimes.backends.onnxruntime import SHARED_BUFFER

    if component == "decoder" and backend in shared_kv_backends(chat):
        return GraphPass(
            "GroupQueryAttention", lambda s, d: fuse_chat_decoder(s, d, chat), ".gqa.onnx", {"kv_cache": SHARED_BUFFER}
        )
    vision = (chat or {}).get("vision_attention") or {}
    if component == "vision" and backend in vision.get("fused", ()):
        return GraphPass("MultiHeadAttention", lambda s, d: fuse_mha(s, d, int(vision["num_heads"])), ".mha.onnx")
    return None
