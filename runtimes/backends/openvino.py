"""OpenVINO backend: IR converted from the bundle's ONNX; fp32 and bf16 share one IR.

On CPUs with AVX512-BF16/AMX, OpenVINO silently runs f32 models in bf16 unless told
INFERENCE_PRECISION_HINT=f32, so fp32 pins f32 and bf16 is its own, explicit variant.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...common.telemetry import require_openvino
from ...errors import BackendError
from ..session import BuildResult, Decoder, RunDecoder, Session, TensorSpec
from . import register
from .base import Backend, Capabilities

_HINT = {"fp32": "f32", "bf16": "bf16"}

_core = None


def _ov():
    return require_openvino()


def core():
    global _core
    if _core is None:
        _core = _ov().Core()
    return _core


_NP = {
    "f32": "float32",
    "f16": "float16",
    "i64": "int64",
    "i32": "int32",
    "boolean": "bool",
    "u8": "uint8",
    "i8": "int8",
    "bf16": "bfloat16",
}


def _spec(port, prefer_graph_name: bool = False) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    name, names = port.get_any_name(), sorted(port.get_names())
    if prefer_graph_name and name.startswith("/"):
        # an input fused with its first node carries that node's "/..." output name too: say the graph's
        name = next((n for n in names if not n.startswith("/")), name)
    aliases = tuple(n for n in names if n != name)
    return TensorSpec(name, _NP.get(port.get_element_type().get_type_name(), "?"), shape, aliases)


KV_PRECISIONS = {"fp32": "f32", "fp16": "f16", "u8": "u8"}  # the CPU plugin's KV_CACHE_PRECISION


def make_stateful(model, cache: Sequence[tuple[str, str]]) -> tuple[dict[tuple[str, str], str], int]:
    """Past inputs and present outputs -> ReadValue / Assign variables (as optimum-intel exports a
    decoder), each starting as an empty cache of the first input's batch: the plugin then keeps the
    cache inside the infer request and a step feeds only its new tokens.
    -> ((past, present) -> variable id, values a cached position holds per batch row)."""
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    apply_make_stateful_transformation(model, dict(cache))
    # without an initializer a reset state has every dynamic axis 0, the batch too
    batch = ops.gather(ops.shape_of(model.inputs[0], "i64"), ops.constant([0]), ops.constant(0))
    ids, per_position = set(), 0
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        shape = op.get_output_partial_shape(0)  # (batch, heads, positions, head_dim)
        dims = [
            batch if axis == 0 else ops.constant(np.array([d.get_length() if d.is_static else 0], np.int64))
            for axis, d in enumerate(shape)
        ]
        op.set_arguments([ops.broadcast(ops.constant(0.0, op.get_output_element_type(0)), ops.concat(dims, 0))])
        ids.add(op.get_variable_id())
        per_position += int(np.prod([d.get_length() for axis, d in enumerate(shape) if axis not in (0, 2)]))
    model.validate_nodes_and_infer_types()
    pairs = {}
    for past, present in cache:
        if past + present not in ids:  # the transformation names a variable past + present
            raise BackendError(f"openvino made no state variable for {past} -> {present}")
        pairs[(past, present)] = past + present
    return pairs, per_position


BEAM_IDX = "beam_idx"  # the rows each step's cache is read from (Gather before every cache Concat)


def _consumers(output) -> list:
    return [t.get_node() for t in output.get_target_inputs()]


def _one(nodes: list, kind: str, where: str):
    found = [n for n in nodes if n.get_type_name() == kind]
    if len(found) != 1:
        raise BackendError(f"{where}: expected one {kind} after it, found {len(found)}: not the exported decoder")
    return found[0]


def fuse_attention(model, cache: Sequence[tuple[str, str]], heads: int, kv_heads: int, head_dim: int) -> None:
    """Each layer's attention (MatMul, scale, mask, Softmax, MatMul over the cache Concat) -> one
    ScaledDotProductAttention over K / V broadcast from their heads to the query's (Unsqueeze,
    Broadcast, Reshape: the grouped-query form optimum-intel exports). Made stateful after this,
    the CPU plugin fuses ReadValue -> Gather -> Concat -> SDPA into its own KV cache, appended in
    place (StatefulSDPAFusion), where the plain graph's Concat copies the whole cache every step."""
    ops = _ov().opset13
    made = {name: r.input_value(0).get_node() for r in model.get_results() for name in r.output(0).get_names()}
    rep = heads // kv_heads

    def broadcast(kv):
        one = ops.unsqueeze(kv, ops.constant(np.int64([2])))
        wide = ops.broadcast(one, ops.constant(np.int64([1, 1, rep, 1, 1])), broadcast_spec="bidirectional")
        return ops.reshape(wide, ops.constant(np.int64([0, heads, -1, head_dim])), special_zero=True)

    for (_, present_k), (_, present_v) in zip(cache[0::2], cache[1::2]):
        cat_k, cat_v = made.get(present_k), made.get(present_v)
        if cat_k is None or cat_v is None or {cat_k.get_type_name(), cat_v.get_type_name()} != {"Concat"}:
            raise BackendError(f"{present_k} / {present_v} are not the Concats of a past and a new cache")
        scores = _one(_consumers(cat_k.output(0)), "MatMul", present_k)
        q_view = scores.input_value(0).get_node()  # the query grouped by K/V head: its input is (b, heads, t, d)
        scale = _one(_consumers(scores.output(0)), "Multiply", present_k)
        factor = next(v.get_node() for v in scale.input_values() if v.get_node().get_type_name() == "Constant")
        add = _one(_consumers(_one(_consumers(scale.output(0)), "Reshape", present_k).output(0)), "Add", present_k)
        mask5 = next(v.get_node() for v in add.input_values() if v.get_node().get_type_name() == "Unsqueeze")
        heads_out = _one(
            _consumers(_one(_consumers(cat_v.output(0)), "MatMul", present_v).output(0)), "Reshape", present_v
        )
        sdpa = ops.scaled_dot_product_attention(
            q_view.input_value(0),
            broadcast(cat_k.output(0)),
            broadcast(cat_v.output(0)),
            mask5.input_value(0),  # the additive causal mask, (b, 1, t, past + t)
            ops.constant(np.float32(factor.get_data().reshape(-1)[0])),
            causal=False,
        )
        for target in list(heads_out.output(0).get_target_inputs()):  # (b, heads, t, d), as the graph had it
            target.replace_source_output(sdpa.output(0))
    model.validate_nodes_and_infer_types()


def add_beam_idx(model) -> None:
    """A ``beam_idx`` input gathering the cache's rows before each Concat: the pattern the CPU plugin's
    stateful SDPA fusion matches (optimum-intel's beam reordering); steps feed 0..rows-1."""
    ops = _ov().opset13
    beam = ops.parameter([-1], np.int32, name=BEAM_IDX)
    beam.output(0).get_tensor().set_names({BEAM_IDX})
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            for target in list(op.output(0).get_target_inputs()):
                if target.get_node().get_type_name() == "Concat":
                    target.replace_source_output(ops.gather(op.output(0), beam, ops.constant(np.int64(0))).output(0))
    model.add_parameters([beam])
    model.validate_nodes_and_infer_types()


class OvSession(Session):
    """A compiled model and its request. With ``options["kv_state"]`` ((past, present) pairs) the model
    is compiled stateful (make_stateful) for ``open_decoder``; ``run`` still takes past and returns
    present (the declared graph), setting and reading the states around one inference."""

    def __init__(self, path: str | os.PathLike, runtime: dict[str, Any] | None, threads: int | None):
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        config.update(runtime or {})
        device = str(config.pop("device", "cpu")).upper()
        cache = [tuple(pair) for pair in config.pop("kv_state", None) or ()]
        kv_precision = config.pop("kv_precision", "fp32")
        attention = config.pop("kv_attention", None)  # (heads, kv heads, head_dim): fuse_attention first
        if device not in core().available_devices:
            raise BackendError(
                f"OpenVINO device {device} is not available here (have: {', '.join(core().available_devices)})"
            )
        if kv_precision not in KV_PRECISIONS:
            raise BackendError(f"KV cache precision {kv_precision!r}: choose from {', '.join(KV_PRECISIONS)}")
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._states: dict[tuple[str, str], str] = {}
        self._per_position = 0
        try:
            if cache:
                model = core().read_model(str(path))
                declared = ([_spec(p, prefer_graph_name=True) for p in model.inputs], [_spec(p) for p in model.outputs])
                if attention:
                    fuse_attention(model, cache, *attention)
                self._states, self._per_position = make_stateful(model, cache)
                if attention:
                    add_beam_idx(model)
                config["KV_CACHE_PRECISION"] = KV_PRECISIONS[kv_precision]
                self._compiled = core().compile_model(model, device, config)
            else:
                self._compiled = core().compile_model(str(path), device, config)
        except RuntimeError as exc:
            raise BackendError(f"openvino cannot load {path}: {str(exc).splitlines()[0]}") from exc
        self._request = self._compiled.create_infer_request()
        self.inputs = [_spec(p, prefer_graph_name=True) for p in self._compiled.inputs]
        self.outputs = [_spec(p) for p in self._compiled.outputs]
        self._out_ports = list(self._compiled.outputs)
        if cache:  # run() keeps the declared graph: past in, present out
            self.inputs, self.outputs = declared
        self._decode_request = None  # the decoders' own request, made on first use
        self._beam = BEAM_IDX if attention and cache else None

    @property
    def stateful(self) -> bool:
        return bool(self._states)

    def run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._states:
            return self._run_stateful(feeds)
        result = self._request.infer(feeds)
        # copy: the request's output buffers are reused by the next call
        return {s.name: np.array(result[p], copy=True) for s, p in zip(self.outputs, self._out_ports)}

    def _run_stateful(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ov, feeds = _ov(), dict(feeds)
        states = {s.name: s for s in self._request.query_state()}
        for (past, _), var in self._states.items():
            states[var].state = ov.Tensor(np.ascontiguousarray(feeds.pop(past)))
        if self._beam:
            feeds[self._beam] = np.arange(len(next(iter(feeds.values()))), dtype=np.int32)
        result = self._request.infer(feeds)
        out = {p.get_any_name(): np.array(result[p], copy=True) for p in self._out_ports}
        for (_, present), var in self._states.items():
            out[present] = np.array(states[var].state.data, copy=True)
        return out

    def open_decoder(self, cache: Sequence[tuple[str, str]], logits: str = "logits") -> Decoder:
        if self._states:  # a request per decoder: the cache lives in it
            if {tuple(p) for p in cache} != set(self._states):
                raise BackendError("open_decoder's cache differs from the pairs the session was made stateful with")
            return OvStatefulDecoder(
                self._compiled.create_infer_request(), self._states, self._per_position, logits, self._beam
            )
        if self._decode_request is None:
            # an own request: shared (zero-copy) inputs must not leak into run()'s copying request
            self._decode_request = self._compiled.create_infer_request()
        return OvDecoder(self, cache, logits, self._decode_request)

    def close(self) -> None:
        self._request = self._decode_request = self._compiled = None  # OpenVINO frees the compiled model
        super().close()


class OvDecoder(RunDecoder):
    """The decode path on OpenVINO: the session's decode request shares our input arrays (no copy in)
    and present is copied out: output tensors bound to our buffers were measured to be overwritten
    when another request of the same compiled model ran between two steps."""

    def __init__(self, session: OvSession, cache: Sequence[tuple[str, str]], logits: str, request):
        super().__init__(session, cache, logits)
        self.request = request

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.request.infer(feeds, share_inputs=True, share_outputs=False)
        return {p.get_any_name(): res[p] for p in res.keys()}


class OvStatefulDecoder(Decoder):
    """The decode fast path of a stateful model: the KV cache is the request's state, appended to inside
    each inference; a step feeds only its new tokens. ``trim`` keeps a prefix (get_state, slice,
    set_state; 0: reset), ``present`` copies a state out."""

    def __init__(
        self, request, states: dict[tuple[str, str], str], per_position: int, logits: str, beam: str | None = None
    ):
        self.request, self.logits_name, self.beam = request, logits, beam
        handles = {s.name: s for s in request.query_state()}
        self.states = {present: handles[var] for (_, present), var in states.items()}
        self.past_of = {present: past for past, present in states}
        self.per_position, self.rows, self.length = per_position, 1, 0

    def start(self, past: dict[str, np.ndarray], fixed: dict[str, np.ndarray], room: int) -> None:
        if fixed:
            raise BackendError("a stateful decoder takes no fixed inputs")
        self.request.reset_state()
        shape = np.shape(next(iter(past.values()))) if past else (1, 0, 0)
        self.rows, self.length = int(shape[0]), int(shape[2])
        if self.length:
            ov = _ov()
            for present, state in self.states.items():
                state.state = ov.Tensor(np.ascontiguousarray(past[self.past_of[present]], np.float32))

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.beam:  # each row reads its own cache
            feeds = {**feeds, self.beam: np.arange(self.rows, dtype=np.int32)}
        res = self.request.infer(feeds, share_inputs=True)
        self.length += int(next(iter(feeds.values())).shape[1])
        return np.array(res[self.logits_name])

    def present(self, name: str) -> np.ndarray:
        return np.array(self.states[name].state.data, np.float32)

    def reorder(self, rows: np.ndarray) -> None:
        ov = _ov()
        for state in self.states.values():
            state.state = ov.Tensor(np.ascontiguousarray(np.asarray(state.state.data)[rows]))

    def trim(self, length: int) -> None:
        if length >= self.length:
            return
        if length == 0:
            self.request.reset_state()
        else:
            ov = _ov()
            for state in self.states.values():
                state.state = ov.Tensor(np.ascontiguousarray(np.asarray(state.state.data)[:, :, :length]))
        self.length = length

    @property
    def nbytes(self) -> int:
        """As fp32 values (a smaller KV_CACHE_PRECISION holds less)."""
        return self.length * self.rows * self.per_position * 4

    def close(self) -> None:
        self.request = self.states = None


@register
class OpenVino(Backend):
    """IR converted from the bundle's ONNX (fp32 and bf16 share one IR); quantize adds int8 / fp16 IRs."""

    name = "openvino"
    extra = "openvino"
    capabilities = Capabilities(
        builds=("fp32", "bf16"),
        runs=("fp32", "bf16", "fp16", "int8", "int4"),
        devices=("cpu", "gpu"),
        kv_state=True,  # make_stateful: the decoder's cache lives in its infer request (ReadValue / Assign)
        kv_precisions=tuple(KV_PRECISIONS),
        # what OpenVINO's CPU plugin looks for; cpu_supports asks the plugin itself (it decides)
        cpu_needs={"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16",)},
        device_build=True,
    )

    def available(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install 'mmdeploy[openvino]')"
        return None

    def version(self) -> str:
        return _ov().get_version()

    def cpu_supports(self, precision: str) -> bool:
        """The CPU plugin's own OPTIMIZATION_CAPABILITIES (what it will really run natively)."""
        need = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}.get(precision)
        return need is None or need in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")

    def build(self, onnx_path: Path, out_dir: Path, precision: str, component: str, **settings) -> BuildResult:
        self.check_builds(precision)
        if not self.cpu_supports(precision):
            raise BackendError(f"this CPU has no native {precision} support for OpenVINO")
        ov = _ov()
        xml = out_dir / "openvino" / f"{component}.xml"
        if not xml.exists():  # fp32 and bf16 share the IR
            xml.parent.mkdir(parents=True, exist_ok=True)
            model = ov.convert_model(str(onnx_path))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        rel = xml.relative_to(out_dir).as_posix()
        return BuildResult(
            path=rel,
            files=[rel, rel[:-4] + ".bin"],
            runtime={"INFERENCE_PRECISION_HINT": _HINT[precision]},
            built_for={"openvino": self.version(), "device": "CPU"},
        )

    def open(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> OvSession:
        return OvSession(path, dict(options or {}, **({"device": device} if device else {})), threads)

    def describe(self) -> str:
        caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return f"devices: {', '.join(core().available_devices)}; CPU: {', '.join(caps)}"
