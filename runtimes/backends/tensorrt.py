"""TensorRT backend: plans built from the bundle's ONNX on the GPU that runs them.

- An optimization profile for every dynamic axis (min/opt/max from models.yaml's `profile`).
- fp32 / fp16 (BuilderFlag.FP16) from the fp32 ONNX; int8 from the bundle's symmetric Q/DQ
  ONNX, parsed as a strongly typed network (TensorRT takes only symmetric int8 Q/DQ with
  zero point 0, so GPU targets get their own Q/DQ file).
- Timing cache stored in the bundle and reused by later builds.
- Plans are keyed by GPU compute capability + TensorRT version + device name. A plan built
  elsewhere is rebuilt when the builder is here, otherwise refused: never deserialised blindly.
- Runtime through cuda-python with device buffers allocated once at the profile's max shape.

TensorRT and cuda-python are imported lazily: everything but build/open runs without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, InputError
from ..session import BuildResult, Session, TensorSpec
from . import register
from .base import Backend, BuildJob, Capabilities

PRECISIONS = ("fp32", "fp16", "int8")
WORKSPACE_MB = {"gpu": 4096, "jetson-orin": 2048, "jetson-xavier": 1024}
# Jetson targets: compute capability of the SoC GPU (a plan is only valid there)
TARGET_CC = {"jetson-orin": "8.7", "jetson-xavier": "7.2"}
INSTALL_HINT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU run  pip install 'mmdeploy[tensorrt]'  "
    "(on Jetson it comes with JetPack)"
)


# -- pure logic, testable without a GPU ---------------------------------------------------


@dataclass(frozen=True)
class PlanKey:
    """What a plan is valid for."""

    compute_capability: str
    tensorrt: str
    device: str

    def matches(self, other: PlanKey) -> bool:
        # TensorRT plans are tied to the exact TRT version and the GPU architecture; the device
        # name is recorded for humans (same-architecture boards share plans).
        return self.compute_capability == other.compute_capability and self.tensorrt == other.tensorrt

    def to_dict(self) -> dict[str, str]:
        return {"compute_capability": self.compute_capability, "tensorrt": self.tensorrt, "device": self.device}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanKey:
        return cls(str(d["compute_capability"]), str(d["tensorrt"]), str(d.get("device", "?")))

    def __str__(self) -> str:
        return f"sm{self.compute_capability.replace('.', '')} / TensorRT {self.tensorrt} / {self.device}"


def check_plan(plan_key: dict[str, Any] | None, here: PlanKey, path: str) -> None:
    """Refuse a plan built for another GPU or TensorRT version, with what to do."""
    if not plan_key:
        raise BackendError(f"{path} has no plan key: rebuild it with `mmdeploy build BUNDLE --backend tensorrt`")
    built = PlanKey.from_dict(plan_key)
    if not built.matches(here):
        raise BackendError(
            f"{path} was built for {built}, this machine is {here}: run `mmdeploy build BUNDLE --backend tensorrt` here"
        )


def derive_profile(
    inputs: list[dict[str, Any]],
    profile: dict[str, list[int]] | None,
    overrides: dict[str, list[int]] | None = None,
    limits: dict[str, int] | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max shapes for every input from its symbolic shape and the model's profile.

    `profile` maps an axis name (batch, sequence, ...) to [min, opt, max]; fixed axes stay
    fixed. An axis with no entry is an error naming it, so no silent 1x1 profile is built.
    `limits` caps an axis at what the model takes (sequence: its position table / tokenizer
    max_length): a profile past it is clipped, an axis with no entry gets [1, limit, limit].
    """
    axes = dict(profile or {})
    axes.update(overrides or {})
    for dim, cap in (limits or {}).items():
        cap = int(cap)
        axes[dim] = [min(int(x), cap) for x in axes[dim]] if dim in axes else [1, cap, cap]
    out = {}
    for spec in inputs:
        lo, opt, hi = [], [], []
        for dim in spec["shape"]:
            if isinstance(dim, int):
                lo.append(dim), opt.append(dim), hi.append(dim)
                continue
            if dim not in axes:
                raise BackendError(
                    f"input {spec['name']}: no min/opt/max for axis {dim!r}; add `profile: {{{dim}: [min, opt, max]}}` "
                    "to the model's models.yaml entry (its `tensorrt.profile`)"
                )
            a, b, c = (int(x) for x in axes[dim])
            if not 1 <= a <= b <= c:
                raise BackendError(f"profile for axis {dim!r} must satisfy 1 <= min <= opt <= max, got {[a, b, c]}")
            lo.append(a), opt.append(b), hi.append(c)
        out[spec["name"]] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def plan_name(component: str, precision: str, key: PlanKey) -> str:
    return f"tensorrt/{component}.{precision}.sm{key.compute_capability.replace('.', '')}-trt{key.tensorrt}.plan"


# -- SDK access ---------------------------------------------------------------------------


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(INSTALL_HINT) from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError("cuda-python is not installed: pip install 'mmdeploy[tensorrt]'") from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def version() -> str:
    return _trt().__version__


def here() -> PlanKey:
    """The plan key of GPU 0 of this machine."""
    cudart = _cudart()
    prop = _check(cudart.cudaGetDeviceProperties(0))
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return PlanKey(f"{prop.major}.{prop.minor}", version(), name.strip("\x00 "))


# -- build --------------------------------------------------------------------------------


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    shapes: dict[str, tuple],
    timing_cache: Path | None = None,
    workspace_mb: int = 4096,
    dla_core: int | None = None,
) -> dict[str, Any]:
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":  # Q/DQ decides the int8 layers; everything else keeps the ONNX types
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build {onnx_path.name} ({precision}); see the log above")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    # unlink first: in a rebuild these are hard links to the live bundle's files
    plan_path.unlink(missing_ok=True)
    plan_path.write_bytes(bytes(plan))
    if timing_cache is not None:
        timing_cache.unlink(missing_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "workspace_mb": workspace_mb,
        "dla_core": dla_core,
        "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
    }


# -- run ----------------------------------------------------------------------------------


_NP = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


class TrtSession(Session):
    """One execution context; device buffers sized once for the profile's max shapes."""

    def __init__(self, path: str | os.PathLike, runtime: dict[str, Any]):
        trt, self.cudart = _trt(), _cudart()
        check_plan(runtime.get("plan_key"), here(), str(path))
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise {path}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.inputs, self.outputs, self._buffers = [], [], {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = _NP[self.engine.get_tensor_dtype(name).name]
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if is_input:
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # max
            else:
                shape = tuple(d if d >= 0 else -1 for d in self.engine.get_tensor_shape(name))
            spec = TensorSpec(
                name, np.dtype(dtype).name, tuple(d if d >= 0 else "?" for d in self.engine.get_tensor_shape(name))
            )
            (self.inputs if is_input else self.outputs).append(spec)
            self._buffers[name] = (dtype, shape)
        self._alloc()

    def _max_elems(self, name: str) -> int:
        dtype, shape = self._buffers[name]
        if all(d > 0 for d in shape):
            return int(np.prod(shape))
        # outputs with data-dependent dims: size from the max input batch (dim 0) and fixed rest
        batch = max(s[1][0] for n, s in self._buffers.items() if n in {i.name for i in self.inputs})
        return int(np.prod([batch if d < 0 and j == 0 else (d if d > 0 else 1024) for j, d in enumerate(shape)]))

    def _alloc(self) -> None:
        self._device = {}
        for name, (dtype, _) in self._buffers.items():
            nbytes = self._max_elems(name) * np.dtype(dtype).itemsize
            self._device[name] = _check(self.cudart.cudaMalloc(nbytes))
            self.context.set_tensor_address(name, int(self._device[name]))

    def run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            arr = np.ascontiguousarray(feeds[spec.name], dtype=self._buffers[spec.name][0])
            self.context.set_input_shape(spec.name, arr.shape)
            _check(cudart.cudaMemcpyAsync(self._device[spec.name], arr.ctypes.data, arr.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT execution failed")
        out = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            host = np.empty(shape, dtype=self._buffers[spec.name][0])
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._device[spec.name], host.nbytes, d2h, self.stream))
            out[spec.name] = host
        _check(cudart.cudaStreamSynchronize(self.stream))
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}

    def close(self) -> None:  # pragma: no cover - needs a GPU
        """Free the device buffers, the stream and the execution context now."""
        device, self._device = self.__dict__.get("_device", {}), {}
        for ptr in device.values():
            try:
                self.cudart.cudaFree(ptr)
            except Exception:
                pass
        if self.__dict__.get("stream") is not None:
            try:
                self.cudart.cudaStreamDestroy(self.stream)
            except Exception:
                pass
            self.stream = None
        self.context = self.engine = None
        super().close()

    def __del__(self):  # pragma: no cover - needs a GPU
        self.close()


@register
class TensorRT(Backend):
    """Plans built from the bundle's ONNX on the GPU that runs them (see the module docstring)."""

    name = "tensorrt"
    extra = "tensorrt"
    capabilities = Capabilities(
        builds=PRECISIONS,
        runs=PRECISIONS,
        devices=("cuda",),
        device_build=True,
        plans_tied_to_device=True,
    )

    def available(self) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return INSTALL_HINT
        try:
            _cudart()
            here()
        except BackendError as exc:
            return str(exc)
        return None

    def version(self) -> str:
        return version()

    def fits(self, artifact) -> bool:
        """True when the artifact's plan was built for this GPU and TensorRT (select skips others)."""
        try:
            return PlanKey.from_dict(artifact.runtime["plan_key"]).matches(here())
        except (KeyError, BackendError):
            return False

    def build_jobs(self, bundle, precisions: list[str] | None = None, dla_core: int | None = None) -> list[BuildJob]:
        """From the bundle's TensorRT block (export --target gpu / jetson-*): its optimization
        profiles, its precisions unless given, and for int8 the Q/DQ ONNX that quantize made."""
        settings = bundle.manifest.get("tensorrt")
        if not settings:
            raise InputError(
                f"{bundle.root} has no TensorRT build settings: export it with --target gpu (or jetson-orin / jetson-xavier)"
            )
        jobs = []
        for comp, spec in bundle.components.items():
            options = {
                "shapes": {k: tuple(tuple(x) for x in v) for k, v in settings["profiles"][comp].items()},
                "target": settings["target"],
                "dla_core": dla_core,
            }
            for precision in precisions or settings["precisions"]:
                source = spec["onnx"]
                if precision == "int8":
                    entry = settings["int8_onnx"].get(comp)
                    if entry is None:
                        raise InputError(
                            f"{bundle.root} has no int8 Q/DQ ONNX for {comp}: run `mmdeploy quantize BUNDLE --backend tensorrt --precision int8 --calib DATA` first"
                        )
                    source = entry["path"]
                jobs.append(BuildJob(comp, precision, source, options))
        return jobs

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        precision: str,
        component: str,
        shapes: dict | None = None,
        target: str = "gpu",
        dla_core: int | None = None,
    ) -> BuildResult:
        self.check_builds(precision)
        if shapes is None:
            raise BackendError("tensorrt needs an optimization profile (derive_profile) to build")
        key = here()
        if target in TARGET_CC and TARGET_CC[target] != key.compute_capability:
            raise BackendError(
                f"target {target} needs a plan for sm{TARGET_CC[target].replace('.', '')}, this GPU is {key}: "
                "copy the bundle to the device and run `mmdeploy build` there"
            )
        rel = plan_name(component, precision, key)
        cache = "tensorrt/timing.cache"  # reused by the next build: kept with the bundle
        settings = build_plan(
            onnx_path,
            out_dir / rel,
            precision,
            shapes,
            timing_cache=out_dir / cache,
            workspace_mb=WORKSPACE_MB.get(target, 4096),
            dla_core=dla_core,
        )
        return BuildResult(
            path=rel,
            files=[rel],
            runtime={"plan_key": key.to_dict()},
            built_for={
                "tensorrt": key.tensorrt,
                "compute_capability": key.compute_capability,
                "device": key.device,
                **settings,
            },
            kept=[cache] if (out_dir / cache).is_file() else [],
        )

    def open(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> TrtSession:
        return TrtSession(path, options or {})

    def describe(self) -> str:
        return f"this GPU: {here()}"
