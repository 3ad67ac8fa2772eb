"""Offline teacher cache: the teacher's sampled (or top-k) distribution stored once, read by many training runs.

``nemo-subnet teacher-cache`` (build.py) runs the teacher forward only over the samples a run will read and
writes, per token position, K ids drawn from its temperature-T distribution (store.py: the files, provenance,
resumable segments); a run with ``distill.teacher_source: cache`` reads them (training.py) and trains with
``kernels.fused_linear_sampled_kd_loss``, with no teacher built or loaded. See docs/teacher_cache.md.
"""
