"""Makes tests/data/hf_bert_tiny_{ts,dynamo}.onnx: a tiny Hugging Face BERT (transformers 5.25.0, random
weights) exported with TorchScript opset 17 and with dynamo, symbolic batch and sequence. Needs
transformers in its own venv (CI does not install it): python tests/data/make_hf_bert_tiny.py"""
from __future__ import annotations

import os

import torch
import transformers
from transformers import BertConfig, BertModel

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)
cfg = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=128, type_vocab_size=2)
m = BertModel(cfg).eval()
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.2)
ids = torch.randint(0, 96, (2, 16)); mask = torch.ones(2, 16, dtype=torch.long)


class W(torch.nn.Module):
    """The model with its last hidden state as the one output."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


w = W(m).eval()
torch.onnx.export(w, (ids, mask), os.path.join(HERE, "hf_bert_tiny_ts.onnx"), dynamo=False, opset_version=17,
                  input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                  dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}})
b, s = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("sequence", min=2, max=128)
torch.onnx.export(w, (ids, mask), os.path.join(HERE, "hf_bert_tiny_dynamo.onnx"), dynamo=True, external_data=False,
                  input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                  dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
print(transformers.__version__)
