"""Device-discipline mode of the CPU backend: CPU runs that fail where a GPU run would.

On CPU every tensor lives in host memory, so code that forgets a ``device=`` runs fine here and dies on
the first GPU job (a host tensor in an NCCL all-reduce, a host mask multiplied into CUDA activations).
In this mode each tensor is classified as it would be placed on a GPU machine, and the two GPU-only
failures raise here, naming the call site in our code:

- an op mixing *host* and *device* tensors (0-dim host tensors aside: CUDA accepts CPU scalars), and
  ``Tensor.numpy()`` on a device tensor;
- a collective (``torch.distributed.all_reduce`` & co., p2p ops) on a host tensor over a group that is
  NCCL on GPU (every group not created with an explicit gloo backend).

Classification, chosen so that the defaults match a GPU process:
- *host*: created by a factory without a CUDA device (``torch.tensor([1.0])``, ``torch.zeros(n)``,
  ``torch.from_numpy``, ``torch.load``, safetensors), by ``.cpu()`` / ``.to("cpu")``, or by an op whose tensor inputs are all host.
  The mark is a Python attribute on the tensor, propagated through every torch call.
- *device*: everything else — a factory given a CUDA device (what ``torch.cuda.current_device()`` feeds
  megatron), ``.cuda()`` / ``.to("cuda")``, outputs of ops with a device input, and tensors made by C++
  without a Python call (autograd's gradients).
  ``Tensor.device`` of a device tensor reads ``cuda:0``, so ``torch.empty(n, device=x.device)`` follows
  ``x`` as it would on a GPU; ``Tensor.is_cuda`` stays the
  truth (it picks Triton vs. the torch mirror in ``kernels/``).

Allowed mixes, as on a GPU: ``copy_`` / ``to`` / ``cuda`` / ``cpu`` / ``x.data = y`` (transfers), host index
tensors in ``[]`` indexing, ``new_*`` factories and anything given only Python numbers. Collectives
on groups created with ``backend="gloo"`` (megatron's metadata groups) take host tensors.

Turned on by ``NEMO_SUBNET_DEVICE_DISCIPLINE=1`` (the test suite sets it for every process it starts).
"""

from __future__ import annotations

import functools
import os
import sys
import threading

import torch
import torch.distributed as dist

ENV_FLAG = "NEMO_SUBNET_DEVICE_DISCIPLINE"
_HOST = "_nemo_subnet_host"  # attribute set on host tensors
_LOGICAL_DEVICE = torch.device("cuda", 0)
_PROJECT_DIRS = tuple(os.sep + name + os.sep for name in ("nemo_subnet", "kernels", "recipes", "benchmarks", "tests"))
_TORCH_DIR = os.path.dirname(torch.__file__)

_desc = torch._C.TensorBase.__dict__
_DEVICE_GETTER = _desc["device"]
_DATA_DESCRIPTOR = _desc["data"]
_GETSET = type(_DEVICE_GETTER)  # Tensor properties: their __get__ is what the mode sees
_TRANSFERS = {torch.Tensor.copy_, torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_NEW_FACTORIES = {torch.Tensor.new_tensor, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_empty,
                  torch.Tensor.new_full}
_LIKE_FACTORIES = {torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like, torch.rand_like,
                   torch.randn_like, torch.randint_like}


class DeviceDisciplineError(RuntimeError):
    """A host/device mistake that would fail (or silently sync) on a GPU machine."""


def enabled_by_env() -> bool:
    return os.environ.get(ENV_FLAG, "0") == "1"


def is_host(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.__dict__.get(_HOST, False)


def _mark(tensor, host: bool):
    if isinstance(tensor, torch.Tensor):
        if host:
            setattr(tensor, _HOST, True)
        elif tensor.__dict__.get(_HOST):
            del tensor.__dict__[_HOST]
    return tensor


def _mark_all(result, host: bool):
    if isinstance(result, torch.Tensor):
        _mark(result, host)
    elif isinstance(result, (tuple, list)):
        for item in result:
            if isinstance(item, torch.Tensor):
                _mark(item, host)
    return result


def _call_site() -> str:
    """The innermost frame in this project's code (else the innermost outside torch)."""
    frame, fallback = sys._getframe(2), None
    while frame is not None:
        path = frame.f_code.co_filename
        if path != __file__:
            if any(d in path for d in _PROJECT_DIRS) and "site-packages" not in path:
                return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"
            if fallback is None and not path.startswith(_TORCH_DIR):
                fallback = f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return fallback or "unknown call site"


def _describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def _tensors(args, kwargs):
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    yield item


def _alias(tensor: torch.Tensor, host: bool) -> torch.Tensor:
    """A new tensor object over the same storage (autograd-connected), so the source keeps its class.
    Parameters (``module.cuda()``) are re-marked in place: modules keep their parameter objects."""
    if isinstance(tensor, torch.nn.Parameter):
        return _mark(tensor, host)
    alias = tensor.view_as(tensor) if tensor.requires_grad else tensor.detach()
    return _mark(alias, host)


def _func_name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def disciplined(base_mode_cls, is_cuda_device):
    """A subclass of the CPU backend's TorchFunctionMode that classifies and checks every call."""

    class DisciplinedMode(base_mode_cls):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            owner = getattr(func, "__self__", None)
            if not isinstance(owner, _GETSET):
                owner = None
            if owner is _DEVICE_GETTER:  # Tensor.device (meta tensors and the like keep theirs)
                real = func(*args)
                return real if real.type != "cpu" or is_host(args[0]) else _LOGICAL_DEVICE
            if owner is _DATA_DESCRIPTOR and func.__name__ == "__set__":  # `param.data = x` moves param to x's side
                result = super().__torch_function__(func, types, args, kwargs)
                _mark(args[0], is_host(args[1]))
                return result
            if func is torch.Tensor.cuda:
                return _alias(args[0], host=False)
            if func is torch.Tensor.type and len(args) == 1 and not kwargs and is_host(args[0]):
                return func(*args)
            if func is torch.Tensor.numpy and not is_host(args[0]):
                raise DeviceDisciplineError(
                    f"Tensor.numpy() on a device tensor {_describe(args[0])} at {_call_site()}: on a GPU this "
                    "raises; call .cpu() first (and mind the host sync)")
            if func in (torch.Tensor.to, torch.Tensor.cpu):
                return self._transfer(func, args, kwargs)
            if func is torch.autograd.grad:
                return self._autograd_grad(func, types, args, kwargs)

            has_device = has_host = False
            host_nonscalar = None
            for tensor in _tensors(args, kwargs):
                if is_host(tensor):
                    has_host = True
                    if host_nonscalar is None and tensor.dim() > 0:
                        host_nonscalar = tensor
                else:
                    has_device = True
            if has_device and host_nonscalar is not None and func not in _TRANSFERS:
                if func in _INDEXING:
                    self._check_indexing(func, args)
                elif func not in _NEW_FACTORIES:
                    raise DeviceDisciplineError(
                        f"{_func_name(func)} mixes a host tensor {_describe(host_nonscalar)} with device tensors "
                        f"at {_call_site()}: on a GPU this raises a device mismatch; create it with "
                        "device=... (the runtime's device, or the other operand's .device)")
            device_kw = kwargs.get("device")
            result = super().__torch_function__(func, types, args, kwargs)
            if device_kw is not None:
                host = not is_cuda_device(device_kw)
            elif func in _NEW_FACTORIES or func in _LIKE_FACTORIES or owner is not None:
                host = is_host(args[0])  # follows its source tensor (new_*, *_like, .data/.grad getters)
            elif has_device:
                host = False
            else:
                host = True  # a factory without a device, or an op on host tensors only
            return _mark_all(result, host)

        def _transfer(self, func, args, kwargs):
            source = args[0]
            target = kwargs.get("device")
            if target is None and func is torch.Tensor.to and len(args) > 1 and not isinstance(args[1], torch.dtype):
                target = args[1].device if isinstance(args[1], torch.Tensor) else args[1]
            if func is torch.Tensor.cpu:
                host = True
            elif target is None:
                host = is_host(source)  # a dtype change keeps the placement
            elif isinstance(args[1] if len(args) > 1 else None, torch.Tensor):
                host = is_host(args[1])
            else:
                host = not is_cuda_device(target)
            result = super().__torch_function__(func, (), args, kwargs)
            if result is source and host != is_host(source):
                return _alias(source, host)  # the GPU would return a new tensor on the other side
            return _mark(result, host)

        def _autograd_grad(self, func, types, args, kwargs):
            # gradients are made in C++: each one lives where its input does
            inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
            inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
            grads = super().__torch_function__(func, types, args, kwargs)
            for grad, source in zip(grads, inputs):
                _mark(grad, is_host(source))
            return grads

        @staticmethod
        def _check_indexing(func, args):
            # host index tensors are fine (torch moves them); a host *value* written into a device tensor is not
            if func is torch.Tensor.__setitem__ and len(args) > 2 and isinstance(args[2], torch.Tensor):
                value = args[2]
                if is_host(value) and value.dim() > 0 and not is_host(args[0]):
                    raise DeviceDisciplineError(
                        f"Tensor.__setitem__ writes a host tensor {_describe(value)} into a device tensor at "
                        f"{_call_site()}: move it to the device first")
            if func is torch.Tensor.__getitem__ and is_host(args[0]):
                index = args[1] if len(args) > 1 else None
                items = index if isinstance(index, tuple) else (index,)
                if any(isinstance(i, torch.Tensor) and not is_host(i) for i in items):
                    raise DeviceDisciplineError(
                        f"indexing a host tensor {_describe(args[0])} with a device index at {_call_site()}")

    return DisciplinedMode


# ------------------------------------------------------------------------------------------ collectives
_gloo_groups: set = set()
_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
                "broadcast", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "send", "recv",
                "isend", "irecv", "_all_gather_base", "_reduce_scatter_base")


def _is_gloo_group(group) -> bool:
    return group is not None and id(group) in _gloo_groups


def _check_collective(name: str, group, tensors) -> None:
    if _is_gloo_group(group):
        return
    for tensor in tensors:
        if is_host(tensor):
            raise DeviceDisciplineError(
                f"torch.distributed.{name} on a host tensor {_describe(tensor)} at {_call_site()}: this group is "
                "NCCL on GPU, which takes CUDA tensors only; create the tensor on the runtime's device")


def _wrap_collective(name: str, fn):
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        group = kwargs.get("group")
        if group is None:
            group = next((a for a in args if isinstance(a, dist.ProcessGroup)), None)
        _check_collective(name, group, _tensors(args, kwargs))
        return fn(*args, **kwargs)

    checked.__wrapped_collective__ = fn
    return checked


def _wrap_batch_isend_irecv(fn):
    @functools.wraps(fn)
    def checked(p2p_op_list):
        for op in p2p_op_list:
            _check_collective(f"batch_isend_irecv({op.op.__name__})", op.group, [op.tensor])
            op.op = _unwrapped(op.op)  # c10d tells sends from receives by identity (`op.op is isend`)
        return fn(p2p_op_list)

    checked.__wrapped_collective__ = fn
    return checked


def _unwrapped(fn):
    return getattr(fn, "__wrapped_collective__", fn)


def _p2p_op_class(base):
    """P2POp accepts only c10d's own isend / irecv (an identity check): hand it those."""

    class CheckedP2POp(base):
        def __new__(cls, op, *args, **kwargs):
            return super().__new__(cls, _unwrapped(op), *args, **kwargs)

        def __init__(self, op, *args, **kwargs):
            super().__init__(_unwrapped(op), *args, **kwargs)

    return CheckedP2POp


def _wrap_new_group(fn):
    @functools.wraps(fn)
    def recording(*args, **kwargs):
        group = fn(*args, **kwargs)
        backend = kwargs.get("backend")
        if backend is None and len(args) > 2:
            backend = args[2]
        if group is not None and backend is not None and "gloo" in str(backend).lower() and "nccl" not in str(backend).lower():
            _gloo_groups.add(id(group))
        return group

    recording.__wrapped_collective__ = fn
    return recording


def install_parameter_marks() -> None:
    """``nn.Parameter(data)`` builds a new tensor object in C++ (no torch call the mode sees): give it
    its data's placement, so a module initialized on the host stays host until ``.cuda()``."""
    parameter = torch.nn.Parameter
    if getattr(parameter.__new__, "__wrapped_parameter__", False):
        return
    original = parameter.__new__

    def new(cls, data=None, requires_grad=True):
        param = original(cls, data, requires_grad)
        if data is not None and is_host(data):
            _mark(param, True)
        return param

    new.__wrapped_parameter__ = True
    parameter.__new__ = new
    # constructors that torch-function modes never see: data pipelines (from_numpy), safetensors (asarray),
    # checkpoints (load) — all host unless asked for a CUDA device, as on a GPU machine
    from_numpy, asarray, load = torch.from_numpy, torch.asarray, torch.load
    torch.from_numpy = functools.wraps(from_numpy)(lambda array: _mark(from_numpy(array), True))

    def asarray_on_host(obj, *args, **kwargs):
        device = kwargs.get("device")
        return _mark(asarray(obj, *args, **kwargs), device is None or not _cuda_device(device))

    def load_on_host(*args, **kwargs):
        result = load(*args, **kwargs)
        location = kwargs.get("map_location")
        if location is None or (isinstance(location, (str, torch.device, int)) and not _cuda_device(location)):
            _mark_tree(result)
        return result

    torch.asarray = functools.wraps(asarray)(asarray_on_host)
    torch.load = functools.wraps(load)(load_on_host)


def _mark_tree(value, depth: int = 0) -> None:
    if isinstance(value, torch.Tensor):
        _mark(value, True)
    elif depth < 8 and isinstance(value, dict):
        for item in value.values():
            _mark_tree(item, depth + 1)
    elif depth < 8 and isinstance(value, (list, tuple)):
        for item in value:
            _mark_tree(item, depth + 1)


def _cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def install_in_new_threads(mode) -> None:
    """Torch-function modes are per thread: enter ``mode`` in every thread started from now on (thread
    pools that load checkpoints, e.g. transformers' weight loading), so their tensors are classified too."""
    if getattr(threading.Thread.run, "__discipline_mode__", None) is mode:
        return
    run = threading.Thread.run

    @functools.wraps(run)
    def run_in_mode(self):
        with mode:
            run(self)

    run_in_mode.__discipline_mode__ = mode
    threading.Thread.run = run_in_mode


def install_collective_checks() -> None:
    """Wrap the public collectives of ``torch.distributed`` (what megatron and our code call). c10d's own
    internals (object collectives pick their device per backend) keep the unwrapped functions."""
    if dist.new_group is not _unwrapped(dist.new_group):
        return
    for name in _COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _wrap_collective(name, getattr(dist, name)))
    dist.batch_isend_irecv = _wrap_batch_isend_irecv(dist.batch_isend_irecv)
    dist.P2POp = _p2p_op_class(dist.P2POp)
    dist.new_group = _wrap_new_group(dist.new_group)
