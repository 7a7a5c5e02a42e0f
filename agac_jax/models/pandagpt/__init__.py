"""PandaGPT (ImageBind-Huge + Vicuna with LoRA): the Flax port and what surrounds it.

- `model`: the Flax module (`PandaGPT`): ImageBind's audio and vision trunks (`imagebind`), the
  projection into Vicuna, the shared LLaMA decoder (`models.llama`); `prompt_ids`, `init_params`;
- `fbank`: ImageBind's Kaldi fbank features, its sub-clip sampling and in-place normalisation;
- `video`: ImageBind's video inputs (frames sampled and normalised as its data pipeline does);
- `checkpoints`: the released ImageBind, Vicuna and delta files to one Flax directory, its tokenizer;
- `parity` and `torch_reference`: the port against ImageBind's and PandaGPT's own PyTorch definitions;
- `adapter`: what the model-agnostic `scoring.Scorer` needs from this family.
"""
