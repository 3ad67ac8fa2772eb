"""Transformer layers Megatron has no slot for.

``ParallelResidualTransformerLayer`` (GPT-NeoX / Pythia, ``use_parallel_residual``): attention and MLP
read the same input, ``out = x + attn(ln1(x)) + mlp(ln2(x))``. Megatron's TransformerLayer is strictly
sequential, so this is a subclass that reuses every submodule it builds (norms, attention, MLP,
bias-dropout-add) and only re-orders them; selective recompute (``recompute_mlp``) checkpoints its MLP as
Megatron's layer does.
"""

from __future__ import annotations

from megatron.core import tensor_parallel
from megatron.core.transformer.transformer_layer import TransformerLayer
from megatron.core.utils import make_viewless_tensor

_ATTENTION_KWARGS = ("attention_mask", "rotary_pos_emb", "rotary_pos_cos", "rotary_pos_sin", "attention_bias",
                     "inference_context", "packed_seq_params", "sequence_len_offset")


class ParallelResidualTransformerLayer(TransformerLayer):
    def forward(self, hidden_states, **kwargs):
        residual = hidden_states  # [s, b, h]
        attention_kwargs = {k: kwargs[k] for k in _ATTENTION_KWARGS if k in kwargs}
        attention_output_with_bias = self.self_attention(self.input_layernorm(hidden_states), **attention_kwargs)
        mlp_input = self.pre_mlp_layernorm(hidden_states)  # [s, b, h]
        if self.recompute_mlp:  # keep the MLP's input only; its forward runs again in backward
            # the bias is added inside: megatron's checkpoint cannot return linear_fc2's bias Parameter itself
            # (its recomputing backward never finished on a GPT-NeoX layer); bias-dropout-add adds it first anyway
            mlp_output_with_bias = tensor_parallel.checkpoint(self._mlp_with_bias, False, mlp_input), None
        else:
            mlp_output_with_bias = self.mlp(mlp_input)
        with self.bias_dropout_add_exec_handler():
            hidden_states = self.self_attn_bda(self.training, self.config.bias_dropout_fusion)(
                attention_output_with_bias, residual, self.hidden_dropout)
            hidden_states = self.mlp_bda(self.training, self.config.bias_dropout_fusion)(
                mlp_output_with_bias, hidden_states, self.hidden_dropout)
        output = make_viewless_tensor(inp=hidden_states, requires_grad=hidden_states.requires_grad, keep_graph=True)
        return output, kwargs.get("context")

    def _mlp_with_bias(self, mlp_input):
        output, bias = self.mlp(mlp_input)  # [s, b, h], [h] or None
        return output if bias is None else output + bias
