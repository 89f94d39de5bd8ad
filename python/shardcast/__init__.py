"""shardcast: load big model checkpoints into distributed jobs with one host copy per node.

One process per node reads each shard once into node-shared memory; the other ranks of the node map it. The
tensors you get are zero-copy views of that one copy (placement "shared" or "cow"), your own copies ("private"), or
tensors on your GPU ("cuda"). Works under torchrun, shardcast-run, mpirun, srun, or alone; see docs/python.md.

    import shardcast, torch
    with shardcast.init_empty_weights():
        model = MyModel(config)                      # parameters on the meta device: no memory, no random init
    result = shardcast.load_into(model, "/models/llama", placement="cow", assign=True)
    result.missing_keys, result.unexpected_keys, result.mismatched_keys

Importing shardcast opens nothing: the first call that needs the job (load, load_into, topology) joins it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch  # before the compiled module: it links libtorch_python, which torch loads

from . import _shardcast as _C
from ._version import __version__
from .errors import CheckpointError, DeviceError, PeerError, PeerTimeoutError

__all__ = [
    "CheckpointError",
    "DeviceError",
    "LoadResult",
    "PeerError",
    "PeerTimeoutError",
    "__version__",
    "close",
    "info",
    "init_empty_weights",
    "inspect",
    "last_stats",
    "load",
    "load_into",
    "plan",
    "save_sharded",
    "topology",
    "verify",
]

PathLike = Union[str, "os.PathLike[str]"]
DType = Union[str, torch.dtype]
Device = Union[int, str, torch.device]
DeviceMap = Union[str, Mapping[str, Device]]
MaxMemory = Mapping[Union[int, str], Union[int, str]]
MAP_STRATEGIES = ("auto", "balanced", "sequential")

PLACEMENTS = ("shared", "cow", "private", "cuda")
TRANSPORTS = ("auto", "h2d", "nccl", "scatter")


class LoadResult(NamedTuple):
    """What load_into() did, in nn.Module.load_state_dict's terms, plus shardcast's own figures."""

    missing_keys: List[str]  # in the module, not in the checkpoint
    unexpected_keys: List[str]  # in the checkpoint, not in the module
    mismatched_keys: List[str]  # "name: checkpoint [a, b] vs module [c, d]"
    loaded: int  # module tensors that received checkpoint data (tied ones count once)
    stats: Dict[str, Any]  # phase times, bytes read and staged by this rank, bytes staged on the node
    device_map: Optional[Dict[str, str]] = None  # with a device_map: the map as resolved (planned for "auto")


def _dtype_name(dtype: DType) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype)  # "torch.bfloat16": the core reads torch's names
    if not isinstance(dtype, str):
        raise ValueError(f"dtype must be 'keep', 'auto', a name such as 'bf16', or a torch.dtype, not {dtype!r}")
    return dtype


def _device_name(device: Device) -> str:
    if isinstance(device, bool):
        raise ValueError(f"device_map value {device!r} is not a device")
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)  # a torch.device prints as "cuda:1", "cpu"


def _set_device_map(
    o: "_C.LoadOptions",
    device_map: Optional[DeviceMap],
    max_memory: Optional[MaxMemory],
    offload_folder: Optional[PathLike],
    no_split: Sequence[str],
    keep_in_fp32: Optional[Iterable[str]],
) -> None:
    if isinstance(device_map, str):
        if device_map not in MAP_STRATEGIES:
            raise ValueError(f"device_map={device_map!r} is not one of {', '.join(MAP_STRATEGIES)} or a dict")
        o.device_map_strategy = device_map
    elif device_map is not None:
        o.device_map = [(str(prefix), _device_name(device)) for prefix, device in device_map.items()]
    if max_memory is not None:
        o.max_memory = [(_device_name(device), str(size)) for device, size in max_memory.items()]
    o.offload_folder = os.fspath(offload_folder) if offload_folder is not None else ""
    o.no_split_modules = list(no_split)
    o.keep_in_fp32 = list(keep_in_fp32) if keep_in_fp32 is not None else []


class _Progress:
    """A byte progress bar on stderr, drawn by rank 0 at most ten times a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = width * done // total if total else width
        rate = done / max(now - self.start, 1e-9) / 1e9
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done / 1e9:.2f}/{total / 1e9:.2f} GB {rate:.2f} GB/s"
        )
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _options(
    placement: str,
    dtype: DType,
    tensors: Optional[Iterable[str]],
    tp_size: int,
    tp_rules: Optional[Union[Mapping[str, int], Iterable[str]]],
    timeout: float,
    shm_dir: Optional[PathLike],
    device: Optional[Union[int, str, torch.device]],
    transport: str,
) -> "_C.LoadOptions":
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not one of {', '.join(PLACEMENTS)}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport={transport!r} is not one of {', '.join(TRANSPORTS)}")
    o = _C.LoadOptions()
    o.placement = placement
    o.dtype = _dtype_name(dtype)
    if isinstance(tensors, str):
        raise ValueError(f"tensors must be a list of names or 'prefix*' patterns, not the string {tensors!r}")
    o.tensors = list(tensors) if tensors is not None else []
    o.tp_size = int(tp_size)
    if isinstance(tp_rules, Mapping):
        o.tp_rules = [f"{pattern}:{dim}" for pattern, dim in tp_rules.items()]
    elif tp_rules is not None:
        o.tp_rules = list(tp_rules)
    o.timeout = float(timeout)
    o.shm_dir = os.fspath(shm_dir) if shm_dir is not None else ""
    o.transport = transport
    if device is not None:
        index = torch.device(device).index if not isinstance(device, int) else device
        if index is None:
            raise ValueError(f"device={device!r} names no device index; pass e.g. 'cuda:0' or 0")
        o.device = index
    return o


def _keep_for(keep_for: Optional[Union[float, str, datetime.timedelta]]) -> str:
    if keep_for is None:
        return ""
    if isinstance(keep_for, datetime.timedelta):
        keep_for = keep_for.total_seconds()
    if isinstance(keep_for, (int, float)) and not isinstance(keep_for, bool):
        if keep_for < 0:
            raise ValueError(f"keep_for={keep_for!r} is negative")
        return f"{keep_for}s"
    if isinstance(keep_for, str):
        return keep_for  # "10m", "1h30m", "600": checked by the core
    raise ValueError(f"keep_for={keep_for!r} is not seconds, a duration string ('10m') or a timedelta")


def _map_files(map_files: str) -> str:
    if map_files not in ("auto", "always", "never"):
        raise ValueError(f"map_files={map_files!r} is not one of auto, always, never")
    return map_files


@contextlib.contextmanager
def _progress_for(options: "_C.LoadOptions", label: str, verbose: Optional[bool]) -> Iterator[None]:
    show = verbose if verbose is not None else sys.stderr.isatty()
    if show and topology(options.timeout)["rank"] == 0:
        bar = _Progress(label)
        options.progress = bar
        try:
            yield
        finally:
            bar.close()
    else:
        yield


def load(
    checkpoint: PathLike,
    *,
    placement: str = "shared",
    dtype: DType = "keep",
    map_files: str = "auto",
    keep_for: Optional[Union[float, str, datetime.timedelta]] = None,
    tensors: Optional[Iterable[str]] = None,
    tp_size: int = 1,
    tp_rules: Optional[Union[Mapping[str, int], Iterable[str]]] = None,
    timeout: float = 600,
    shm_dir: Optional[PathLike] = None,
    device: Optional[Union[int, str, torch.device]] = None,
    transport: str = "auto",
    device_map: Optional[DeviceMap] = None,
    max_memory: Optional[MaxMemory] = None,
    offload_folder: Optional[PathLike] = None,
    no_split_modules: Optional[Iterable[str]] = None,
    keep_in_fp32_modules: Optional[Iterable[str]] = None,
    verbose: Optional[bool] = None,
) -> Dict[str, torch.Tensor]:
    """Loads a checkpoint as this rank's state dict; every rank of the job calls it.

    checkpoint: a directory (model.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json or
        pytorch_model.bin), an index file, or one .safetensors/.bin file.
    placement: "shared" (read-only zero-copy views of the node's one copy; writing to one kills the process with
        SIGSEGV, after a message naming the segment), "cow" (zero-copy views whose writes stay in this rank: trainable),
        "private" (this rank's own copies, staged one shard at a time), "cuda" (tensors on cuda:LOCAL_RANK, or
        `device`, through the node's pinned ring; `transport` auto, h2d, nccl or scatter).
    dtype: "keep" keeps each tensor's dtype; "auto" is transformers' torch_dtype="auto" (config.json's torch_dtype,
        else the first floating tensor's); "bf16", "f16", "f32", "f64" or a torch.dtype converts floating tensors
        once per node. keep_in_fp32_modules: with a float16/bfloat16 dtype, modules whose floating tensors load in
        float32 instead.
    device_map: where each tensor lives, as in transformers: {"model.layers.0": "cuda", "lm_head": 0, "": "cpu"}
        (module or parameter prefixes, longest wins; "cuda" is this rank's GPU, K or "cuda:K" device K; "cpu" the
        node's one copy by `placement`; "disk" mapped from the checkpoint file, or written once per node to
        offload_folder when it must be converted or is a .bin), or "auto"/"balanced"/"sequential": planned within
        max_memory ({0: "20GiB", "cpu": "60GiB"}: GPU per rank, cpu per node; default: what is free), keeping
        no_split_modules (module paths) and each layer ("model.layers.3") whole. plan() shows the map a load would
        use, without loading.
    map_files: "auto" (default): with shared, cow or private, safetensors tensors wanted in their own dtype are
        mappings of the checkpoint files (the page cache is the node's one copy; nothing is staged in /dev/shm),
        unless the files are on a network file system; "always" maps there too; "never" stages every tensor. Leave
        the files as they are while the tensors live (replace a checkpoint by renaming a new file over it): a file
        truncated in place makes a later read die with SIGBUS, after a message naming it. The result's
        stats["sources"] says, per tensor, "mapped" or why it was staged.
    keep_for: keep the node's staged copy this long after the job (seconds, "10m", or a timedelta): the next job on
        the node asking for the same bytes (same files, unchanged; same dtype and tensors) attaches to it in
        milliseconds and reads nothing, and moves its expiry on. Tensors mapped from the page cache are not staged,
        so not kept (pass map_files="never" to keep those too). `shardcast ls` lists kept copies, `shardcast gc`
        removes expired ones, `shardcast gc --kept` all; last_stats()["kept"] says what became of this node's.
    tensors: only these names ("prefix*" matches a prefix).
    tp_size, tp_rules: tensor-parallel slices: rank r holds slice r % tp_size of tensors matching a rule, given as
        {"*.q_proj.weight": 0} or ["*.q_proj.weight:0"] (torch.tensor_split along that dim).
    timeout: seconds each wait between ranks may take (staging included); joining the job waits as long.
    shm_dir: put the node's segments in files in this directory instead of /dev/shm.
    verbose: a byte progress bar on rank 0's stderr; default: when stderr is a terminal.

    The views keep their memory mapped as long as any of them (or a view of one) lives; when the last tensor of
    the last rank dies, nothing is left in /dev/shm. Raises ValueError (bad arguments), CheckpointError (bad
    files), TimeoutError, PeerError (another rank failed: .ranks), OSError.
    """
    options = _options(placement, dtype, tensors, tp_size, tp_rules, timeout, shm_dir, device, transport)
    options.map_files = _map_files(map_files)
    options.keep_for = _keep_for(keep_for)
    _set_device_map(options, device_map, max_memory, offload_folder, list(no_split_modules or []), keep_in_fp32_modules)
    with _progress_for(options, "shardcast: loading", verbose):
        named, stats = _C.load(os.fspath(checkpoint), options)
    global _last_stats
    _last_stats = stats
    return dict(named)


_last_stats: Optional[Dict[str, Any]] = None


def last_stats() -> Optional[Dict[str, Any]]:
    """The stats of this process's last load() or load_into(): phase times, bytes read, staged and mapped,
    "sources" ({name: "mapped" or "staged (why)"}), "kept" ({"state": "none", "kept", "reused" or "not kept", "key",
    "expires_unix", "note"}), device_map; None before the first."""
    return _last_stats


def _accelerate_order(module: torch.nn.Module, prefix: str = "") -> Iterator[str]:
    """Tensor names in the order accelerate's infer_auto_device_map fills devices: a module's own parameters, its
    children, then its own buffers."""
    for name, _ in module.named_parameters(recurse=False):
        yield prefix + name
    for name, child in module.named_children():
        yield from _accelerate_order(child, f"{prefix}{name}.")
    for name, _ in module.named_buffers(recurse=False):
        yield prefix + name


def _owner(module: torch.nn.Module, name: str) -> Tuple[torch.nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def _assign(module: torch.nn.Module, assigned: Sequence[Tuple[str, torch.Tensor]]) -> None:
    """Puts the loaded tensors into the module, as load_state_dict(assign=True) does: parameters stay parameters
    with their requires_grad, and names that shared one parameter (tied weights) share the new one."""
    replaced: Dict[int, torch.nn.Parameter] = {}
    for name, tensor in assigned:
        owner, leaf = _owner(module, name)
        if leaf in owner._parameters:
            old = owner._parameters[leaf]
            new = replaced.get(id(old))
            if new is None:
                new = torch.nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else True)
                replaced[id(old)] = new
            owner._parameters[leaf] = new
        elif leaf in owner._buffers:
            owner._buffers[leaf] = tensor
        else:
            raise ValueError(f"'{name}' is in the module's state_dict but is neither a parameter nor a buffer")


def load_into(
    model: torch.nn.Module,
    checkpoint: PathLike,
    *,
    strict: bool = True,
    assign: bool = False,
    placement: str = "cow",
    dtype: DType = "keep",
    map_files: str = "auto",
    keep_for: Optional[Union[float, str, datetime.timedelta]] = None,
    tensors: Optional[Iterable[str]] = None,
    tp_size: int = 1,
    tp_rules: Optional[Union[Mapping[str, int], Iterable[str]]] = None,
    timeout: float = 600,
    shm_dir: Optional[PathLike] = None,
    device: Optional[Union[int, str, torch.device]] = None,
    transport: str = "auto",
    device_map: Optional[DeviceMap] = None,
    max_memory: Optional[MaxMemory] = None,
    offload_folder: Optional[PathLike] = None,
    no_split_module_classes: Optional[Iterable[str]] = None,
    keep_in_fp32_modules: Optional[Iterable[str]] = None,
    verbose: Optional[bool] = None,
) -> LoadResult:
    """Loads a checkpoint into `model` by name, as model.load_state_dict(state_dict, strict, assign) would, without
    the state dict's second copy. Every rank of the job calls it.

    The model's keys are its state_dict() keys: parameters and persistent buffers (non-persistent buffers are left
    alone). strict: missing, unexpected or shape-mismatched keys raise ValueError naming them (after nothing was
    loaded); otherwise they are only reported in the result. Tied parameters are loaded once, and a tied name
    absent from the checkpoint is not missing when another name of it is there.

    assign=False: the module's tensors keep their identity (an optimizer built already still holds them). With
        "private" they are filled in place (copied, in the checkpoint's dtype if it differs); with "shared"/"cow"
        their storage becomes the node's view (no copy); "cuda" moves them to the device. A module on the meta
        device has nothing to fill: use assign=True.
    assign=True: the module's parameters and buffers are replaced by the loaded tensors (parameters keep their
        requires_grad; tied names stay tied), as load_state_dict(assign=True) does: the way to load a model built
        under init_empty_weights().

    device_map: as for load(); "auto" plans over the model's own module tree (in its state_dict order), keeping
        modules whose class is in no_split_module_classes (transformers' _no_split_modules) whole and tied
        parameters on one device. The map used is the result's device_map and model.hf_device_map.

    Other arguments as for load(); placement defaults to "cow" (trainable, zero-copy until written).
    """
    options = _options(placement, dtype, tensors, tp_size, tp_rules, timeout, shm_dir, device, transport)
    options.map_files = _map_files(map_files)
    options.keep_for = _keep_for(keep_for)
    if no_split_module_classes is None:
        no_split_module_classes = getattr(model, "_no_split_modules", None) or []
    classes = set(no_split_module_classes)
    no_split = [name for name, m in model.named_modules() if name and type(m).__name__ in classes]
    if keep_in_fp32_modules is None:
        keep_in_fp32_modules = getattr(model, "_keep_in_fp32_modules", None)
    _set_device_map(options, device_map, max_memory, offload_folder, no_split, keep_in_fp32_modules)
    targets = [(name, t) for name, t in model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)]
    order = {name: i for i, name in enumerate(_accelerate_order(model))}
    targets.sort(key=lambda item: order.get(item[0], len(order)))
    with _progress_for(options, "shardcast: loading", verbose):
        report, assigned = _C.load_into(targets, os.fspath(checkpoint), options, bool(strict), bool(assign))
    global _last_stats
    _last_stats = report["stats"]
    if assign:
        _assign(model, assigned)
    resolved = report["stats"].get("device_map")
    if resolved is not None:
        # transformers' form: GPUs as their index ("cuda" is this rank's: `device`, else LOCAL_RANK).
        own = options.device if options.device >= 0 else topology(timeout)["local_rank"]
        model.hf_device_map = {
            prefix: own if where == "cuda" else int(where[5:]) if where.startswith("cuda:") else where
            for prefix, where in resolved.items()
        }
    return LoadResult(
        report["missing_keys"],
        report["unexpected_keys"],
        report["mismatched_keys"],
        report["loaded"],
        report["stats"],
        resolved,
    )


def plan(
    checkpoint: PathLike,
    *,
    device_map: DeviceMap = "auto",
    max_memory: Optional[MaxMemory] = None,
    placement: str = "shared",
    dtype: DType = "keep",
    tensors: Optional[Iterable[str]] = None,
    no_split_modules: Optional[Iterable[str]] = None,
    keep_in_fp32_modules: Optional[Iterable[str]] = None,
    timeout: float = 600,
    shm_dir: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """The device_map load() would use for the checkpoint, without loading it (as `shardcast plan`): every rank of
    the job calls it. Returns {"device_map": {prefix: device}, "device_bytes": {device: bytes}, "budgets": {device:
    bytes or None for unbounded}, "tensors": n, "tensor_bytes": bytes}."""
    options = _options(placement, dtype, tensors, 1, None, timeout, shm_dir, None, "auto")
    _set_device_map(options, device_map, max_memory, None, list(no_split_modules or []), keep_in_fp32_modules)
    return _C.plan(os.fspath(checkpoint), options)


@contextlib.contextmanager
def init_empty_weights(include_buffers: bool = False) -> Iterator[None]:
    """Builds modules with their parameters on the meta device: no memory and no random init, as accelerate's
    init_empty_weights. Buffers stay real unless include_buffers (non-persistent ones, such as rotary tables, are
    computed at construction and not in checkpoints). Load such a model with load_into(..., assign=True)."""
    meta = torch.device("meta")
    original_parameter = torch.nn.Module.register_parameter
    original_buffer = torch.nn.Module.register_buffer

    def register_parameter(self: torch.nn.Module, name: str, param: Optional[torch.nn.Parameter]) -> None:
        original_parameter(self, name, param)
        # One already on meta is kept as it is: `lm_head.weight = embed.weight` must stay the same object (tied).
        if param is not None and not param.is_meta:
            kind = type(param)  # a Parameter subclass keeps its class and attributes
            kwargs = {**param.__dict__, "requires_grad": param.requires_grad}
            self._parameters[name] = kind(param.to(meta), **kwargs)

    def register_buffer(self: torch.nn.Module, name: str, tensor: Optional[torch.Tensor], persistent: bool = True) -> None:
        original_buffer(self, name, tensor, persistent=persistent)
        if tensor is not None and not tensor.is_meta:
            self._buffers[name] = self._buffers[name].to(meta)

    torch.nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    if include_buffers:
        torch.nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original_parameter  # type: ignore[method-assign]
        torch.nn.Module.register_buffer = original_buffer  # type: ignore[method-assign]


def save_sharded(
    state_dict: Mapping[str, torch.Tensor],
    save_directory: PathLike,
    *,
    max_shard_size: Union[int, str] = "5GB",
    safe_serialization: bool = True,
) -> List[str]:
    """Writes a state dict as a Hugging Face sharded checkpoint into a new or empty directory, as transformers'
    save_pretrained shards it: model-00001-of-0000N.safetensors + model.safetensors.index.json (or one
    model.safetensors when it fits); with safe_serialization=False, torch.save shards (pytorch_model-*.bin +
    pytorch_model.bin.index.json). max_shard_size: bytes, or "5GB" (10^9) / "2GiB" (2^30). Returns the files."""
    tensors = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state_dict['{name}'] is a {type(tensor).__name__}, not a tensor")
        tensors.append((name, tensor.detach()))
    size = str(max_shard_size) if isinstance(max_shard_size, int) else max_shard_size
    return _C.save_sharded(tensors, os.fspath(save_directory), size, bool(safe_serialization))


def inspect(checkpoint: PathLike) -> Dict[str, Any]:
    """The checkpoint's shards, tensor count, dtypes, sizes and metadata, from its index and headers alone (what
    `shardcast inspect --json` prints). Raises CheckpointError for a malformed checkpoint."""
    return json.loads(_C.inspect(os.fspath(checkpoint)))


def verify(checkpoint: PathLike) -> Dict[str, Any]:
    """Validates every byte of a checkpoint; never raises for a bad one: {"ok", "problems", "shards", "tensors",
    "bytes_read"}, one line per problem naming the file, tensor and offset."""
    return _C.verify(os.fspath(checkpoint))


def info() -> Dict[str, Any]:
    """This build's version, the torch it was built against, GPU support, the communicators built, and the launcher
    this process sees (without joining the job)."""
    return _C.info()


def topology(timeout: float = 600) -> Dict[str, Any]:
    """This rank's place in the job (rank, world_size, local_rank, local_size, node, node_count, job_id, launcher,
    communicator). Joins the job on first use, as the first load does."""
    return _C.topology(float(timeout))


def close() -> None:
    """Leaves the job (done at exit too): the next load joins it again."""
    _C.close()


atexit.register(close)
