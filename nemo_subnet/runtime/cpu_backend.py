"""Run megatron-core on machines without CUDA (dev boxes, CI, the demo).

megatron-core assumes CUDA in four places we rely on; each gets the smallest redirect that keeps
Megatron's own code paths running unchanged:

1. Device placement: ``torch.cuda.current_device()`` feeds ``device=`` in attention, the tensor-parallel
   mappings, p2p communication and the GPT model; the 1F1B schedule even writes ``device="cuda"``.
   A ``TorchFunctionMode`` rewrites every CUDA device argument to CPU and makes ``Tensor.cuda()`` the
   identity. ``current_device()`` answers 0, as on a one-GPU box, and the mode maps that to CPU.
2. The CUDA RNG tracker (``tensor_parallel.random``): replaced by a tracker that keeps the same named
   streams on CPU generator states, so dropout differs across TP ranks exactly as it does on GPU; the
   "CUDA RNG state" that activation recompute saves and restores is the CPU generator's.
3. ``torch.cuda.synchronize``: a no-op (CPU ops are synchronous).
4. The optimizer's type asserts (``param.grad.type() == 'torch.cuda.FloatTensor'``): ``Tensor.type()``
   with no argument reports the CUDA type name of the same dtype.
5. Custom autograd Functions' ``backward`` runs with an empty torch-function mode stack, so the mode of 1.
   would not see it; sequence parallelism's backward allocates its reduce-scatter and all-gather buffers
   there with ``device=torch.cuda.current_device()``. Every such backward runs inside the redirect of 1.
   (without the discipline checks: gradients are made in C++ and carry no host/device classification).

Nothing here is active when CUDA is present: ``install()`` returns False and changes nothing.

``install(discipline=True)`` (or ``NEMO_SUBNET_DEVICE_DISCIPLINE=1``) adds the device-discipline checks of
``device_discipline.py``: host/device mistakes that only a GPU would catch raise here too.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from megatron.core.tensor_parallel import random as mp_random
from torch.autograd import function as autograd_function
from torch.overrides import TorchFunctionMode

from nemo_subnet.runtime import device_discipline

_INSTALLED_MODE: "_CudaToCpuMode | None" = None


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # a bare int is a CUDA ordinal in torch's device argument convention
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placement to CPU for every torch call made while it is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
    """Megatron's named RNG streams, kept as CPU generator states.

    ``fork(name)`` swaps the CPU default generator to the named stream for the duration of the block,
    which is where CPU dropout draws from. Seeds per stream are Megatron's own (TP rank offsets etc.).
    """

    def __init__(self):
        super().__init__(use_cudagraphable_rng=False, is_inference_rng_tracker=False)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name=mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer_state = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer_state)


def _enter_mode_in_custom_backward(mode) -> None:
    backward_apply = autograd_function.BackwardCFunction.apply

    @functools.wraps(backward_apply)
    def apply_in_mode(self, *args):
        if torch._C._len_torch_function_stack():
            return backward_apply(self, *args)
        with mode:
            return backward_apply(self, *args)

    autograd_function.BackwardCFunction.apply = apply_in_mode


def install(discipline: bool | None = None) -> bool:
    """Activate the CPU backend if (and only if) CUDA is absent. Idempotent; returns whether active.

    ``discipline`` (default: the ``NEMO_SUBNET_DEVICE_DISCIPLINE`` environment flag) also turns on the
    device-discipline checks; it is fixed by the first call."""
    global _INSTALLED_MODE
    if torch.cuda.is_available():
        return False
    if _INSTALLED_MODE is not None:
        return True
    if discipline is None:
        discipline = device_discipline.enabled_by_env()
    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda device=None: None
    # activation recompute saves and restores "the CUDA RNG" next to the CPU one: here the CPU one is the
    # device generator, already saved by megatron's _get_all_rng_states
    mp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda *args, **kwargs: None
    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    if discipline:
        device_discipline.install_collective_checks()
        device_discipline.install_parameter_marks()
        _INSTALLED_MODE = device_discipline.disciplined(_CudaToCpuMode, _is_cuda_device)()
        device_discipline.install_in_new_threads(_INSTALLED_MODE)
    else:
        _INSTALLED_MODE = _CudaToCpuMode()
    _INSTALLED_MODE.__enter__()
    _enter_mode_in_custom_backward(_CudaToCpuMode())
    return True


def is_active() -> bool:
    return _INSTALLED_MODE is not None


def discipline_active() -> bool:
    return _INSTALLED_MODE is not None and not type(_INSTALLED_MODE) is _CudaToCpuMode


def compute_device() -> torch.device:
    """Where this process's hot-path tensors belong: the current GPU; on CPU the host, except in the
    device-discipline mode, where it is the logical ``cuda:0`` (rewritten to the host and marked device)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", 0) if discipline_active() else torch.device("cpu")


def seeded_generator(device, seed: int) -> torch.Generator:
    """A generator for draws on ``device``: that device's own on a GPU; the host's on CPU, where the backend's
    logical ``cuda`` device is host memory (a CUDA generator cannot exist there). CUDA's Philox stream is not
    the CPU's, so seeded draws are reproducible per device type, not across them."""
    generator_device = device if torch.cuda.is_available() else "cpu"
    return torch.Generator(device=generator_device).manual_seed(seed)
