"""The frozen teacher, run inside the student's own Megatron schedule: KD memory flat in micro-batches.

``StudentWithTeacher`` is one pipeline stage of the student (megatron DDP) *and* the teacher's same stage,
driven together by megatron's schedules, the way NVIDIA's Megatron distillation (ModelOpt) does it:

- every micro-batch's forward runs the teacher's stage (``no_grad``) next to the student's;
- between pipeline stages the two hidden states travel as one tensor, concatenated along the hidden
  dimension ``[s, b, h_student + h_teacher]``; ``adjust_tensor_shapes`` widens megatron's p2p shapes to
  match, and on receive the tensor is split back. The teacher half carries no gradient: its slice of
  the gradient sent upstream is zero, and the teacher's own autograd graph is never built;
- on the last stage the student's output goes to the loss and the teacher's is handed over through
  ``teacher_output`` (read by the forward-step's loss closure of the same micro-batch): logits
  ``[b, s, V/tp]``, or with ``distill.fused_output`` on the final hidden states ``[b, s, h_teacher]``,
  from which the loss forms logits chunk by chunk (output_layer.py) — for top-k KD only the global
  top-k (values, ids) ``[b, s, k]`` survives the forward step.

Memory: no teacher logits or hidden states are cached across micro-batches. Per stage, the teacher adds
its weights, the activations of the one micro-batch it is computing (freed at once: no grad), and its
half of the in-flight p2p tensors — the same count the student holds (at most PP micro-batches in 1F1B),
``b * s * h_teacher`` each. At PP = 1 there is no p2p and the teacher's outputs live for one micro-batch.
The alternative, the teacher's forward-only schedule over all micro-batches first with a cache of its
final hidden states, would grow with ``num_microbatches`` (V/H times less than cached logits, still
unbounded in the global batch), so it is not used.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.utils import get_attr_wrapped_model


class StudentWithTeacher(torch.nn.Module):
    """Student stage + teacher stage as one schedulable model (see the module docstring).

    ``student`` is the DDP-wrapped student (megatron finds ``config`` and the DDP hooks through
    ``.module``); ``teacher`` is kept out of the module tree, so it is never part of the optimizer, the
    gradient buffers or the student's checkpoint."""

    def __init__(self, student, teacher, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.module = student
        teacher.eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        self._teacher = (teacher,)
        self.student_hidden, self.teacher_hidden = student_hidden, teacher_hidden
        self.teacher_output: torch.Tensor | None = None

    def __getattr__(self, name):
        # megatron calls DDP methods on the scheduled model itself (finalize_model_grads: finish_grad_sync, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)

    @property
    def teacher(self):
        return self._teacher[0]

    def set_input_tensor(self, input_tensor) -> None:
        tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor
        set_student = get_attr_wrapped_model(self.module, "set_input_tensor")
        if tensor is None:
            set_student(None)
            self.teacher.set_input_tensor(None)
            return
        # [s, b, h_s + h_t] -> the student's half (keeps its grad path to the received tensor), the teacher's
        set_student(tensor[..., : self.student_hidden])
        self.teacher.set_input_tensor(tensor[..., self.student_hidden:].detach())

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            teacher_output = self.teacher(*args, **kwargs)
        student_output = self.module(*args, **kwargs)
        if parallel_state.is_pipeline_last_stage():
            self.teacher_output = teacher_output
            return student_output
        return torch.cat([student_output, teacher_output], dim=-1)  # [s, b, h_s + h_t]

    def take_teacher_output(self) -> torch.Tensor:
        """The teacher's last-stage output of the micro-batch just run (handed over once)."""
        output, self.teacher_output = self.teacher_output, None
        if output is None:
            raise RuntimeError("no teacher output: the forward step must run the model before its loss")
        return output

    def adjust_tensor_shapes(self, recv_shapes: list, send_shapes: list) -> tuple[list, list]:
        """Megatron's p2p shapes ``[(s, b, h_s), ...]`` widened to the concatenated ``h_s + h_t``."""
        widen = lambda shapes: [(*shape[:-1], shape[-1] + self.teacher_hidden) for shape in shapes]  # noqa: E731
        return widen(recv_shapes), widen(send_shapes)
