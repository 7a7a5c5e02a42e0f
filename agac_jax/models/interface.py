"""What the scoring program needs from an audio-language model (DESIGN.md section 9).

A model is a Flax module; the program calls these methods through `model.apply(variables, ...,
method=...)`, keyword-only past the first arguments, and never reaches into the module's children:

- `encode_audio(features, mel_lengths) -> (audio [A, T, D], n_tokens [A])`: the clip's audio state on
  the model's gate grid (T slots, `n_tokens` valid). Run on the clip and on silence.
- `gate_audio(gate [T], audio [T, D], silence [T, D]) -> [T, D]`: the audio input under a gate vector
  m in [0, 1]^T, m = 1 the clip and m = 0 silence. Qwen2-Audio mixes its projected embeddings; a
  model that hears audio differently (PandaGPT: fbank frames through ImageBind) gates its own domain.
- `embed_tokens(input_ids [B, S]) -> [B, S, D]`: text token embeddings.
- `decode(inputs_embeds [B, S, D], *, positions, mask, cache=None, cache_index=None,
  query_weights=None, output_rows=None) -> (hidden, cache)`: the decoder; with `query_weights`
  [B, S, W] each attention layer sows, under `RECEIVED`, its head sum of the query rows weighted by
  each of the W weightings ([B, W, K]); with `output_rows` [B, R] the last layer computes those
  rows only.
- `logits(hidden [..., D]) -> [..., vocab]` float32.
- `embed_prompt(input_ids [B, S], audio [A, T, D], n_tokens [A]) -> [B, S, D]`: the prompt's inputs
  with the clip's audio in place, for greedy generation (`models.generate`).

Besides, as plain attributes of the (unbound) module: `audio_token_id`, `num_layers`, `num_heads` and
`init_cache(batch, max_len)`. The sown names are defined here, once.

Optional, for a model that hears audio differently (the program checks them with `getattr`;
Qwen2-Audio has none of them, PandaGPT all):
- `audio_slots`: the placeholder rows one gate vector fills (default: one per gate slot, T). PandaGPT's
  `gate_audio` returns its one AV token, [1, D]: slot t then fills row min(t, audio_slots - 1), the
  occlusion passes recompute from that row on, and FastV reads the row's attention for every slot.
- `global_scores(features [A, n_mels, P]) -> [A, T]`: the model's own global score per gate slot, in
  place of the LLM attention the audio rows receive (PandaGPT: ImageBind's audio CLS attention).
- `gate_audio(..., context=...)` and `embed_prompt(..., context=...)`: a per-clip array the batch
  carries as `context` [B, ...] (PandaGPT: ImageBind's video vector, summed into the AV token) and the
  program hands to both unchanged; absent from the batch, neither receives it.
- `pads_heard` (True): the slots outside `slot_valid` hold the clip's own padding, which the model hears
  whatever the clip (Voxtral pads every clip to whole 30 s windows); a gate then leaves them as they
  are instead of mixing in silence's (PandaGPT's padding frames, without it, are silence's).
The batch may carry `slot_valid` [B, T] and `slot_ranges` [B, T, 2] (`program.ClipBatch`): gate slots
that hold no audio (padding inside PandaGPT's sub-clips) and the samples each slot reads (frames map
through them, and audio no slot reads is unheard, `selection.UNHEARD`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PROBS = ("attention", "probs")  # (collection, name): every layer's softmax probabilities [B, H, Q, K]
RECEIVED = ("attention_received", "received")  # (collection, name): weighted head sums [B, W, K]


class AudioLanguageModel(Protocol):
    """The methods and attributes the scoring program uses (see the module docstring)."""

    audio_token_id: int
    num_layers: int
    num_heads: int

    def init_cache(self, batch: int, max_len: int) -> Any: ...
    def encode_audio(self, features: jax.Array, mel_lengths: jax.Array) -> tuple[jax.Array, jax.Array]: ...
    def gate_audio(self, gate: jax.Array, audio: jax.Array, silence: jax.Array) -> jax.Array: ...
    def embed_tokens(self, input_ids: jax.Array) -> jax.Array: ...
    def decode(self, inputs_embeds: jax.Array, *, positions: jax.Array, mask: jax.Array, cache: Any = None,
               cache_index: Any = None, query_weights: jax.Array | None = None,
               output_rows: jax.Array | None = None) -> tuple[jax.Array, Any]: ...
    def logits(self, hidden: jax.Array) -> jax.Array: ...
    def embed_prompt(self, input_ids: jax.Array, audio: jax.Array, n_tokens: jax.Array) -> jax.Array: ...


def stack_sown(state: Any, sown: tuple[str, str], num_layers: int) -> jax.Array:
    """[layers, ...]: what every decoder layer sowed under `sown` (`PROBS` or `RECEIVED`), in layer order.

    `state` is the mutable state returned by `apply(..., mutable=[sown[0]])`.
    """
    collection, name = sown
    layers = state[collection]["language_model"]
    return jnp.stack([layers[f"layers_{i}"]["self_attn"][name][0] for i in range(num_layers)])


class ModelInputs(NamedTuple):
    """What a family's adapter makes of B clips and their questions for one bucket (`ModelAdapter.inputs`).

    input_ids [B, S] int32 and attention_mask [B, S]: the prompts, audio placeholders expanded, padded
    on the side asked for; features [B, ...] float32 and mel_lengths [B] int32: what `encode_audio`
    reads; silence_features: the same of silence, when asked for (scoring), else None; slots: the
    optional per-clip gate-slot arrays of `program.ClipBatch` (`slot_valid` [B, T], `slot_ranges`
    [B, T, 2]) for a model whose gate grid is not its token grid.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    features: np.ndarray
    mel_lengths: np.ndarray
    silence_features: np.ndarray | None = None
    slots: dict[str, np.ndarray] = {}


class ModelAdapter(Protocol):
    """The host side of one model family: what the model-agnostic `scoring.Scorer` holds.

    A family's package provides a class implementing this, with a classmethod
    `load(directory, *, shardings, **options) -> (adapter, params)` that reads a checkpoint directory
    as it is downloaded, placing each weight on `shardings(adapter_config)`'s sharding as it is read.
    `models.load_adapter` picks the family by `model.kind` or the directory's marker file.
    """

    kind: str  # the registry key (`models.MODELS`)
    model: AudioLanguageModel  # the Flax module the scoring program runs
    tokenizer: Any
    uses_video: bool  # the clips come with a video the model also sees (`video_context`)
    min_samples: int  # the shortest clip the model gives any audio token

    def generation_settings(self, max_new_tokens: int) -> Any: ...  # `models.generate.GenerationSettings`
    def param_shardings(self, mesh: Any, rules: Any) -> Any: ...  # NamedShardings of the parameters
    def max_samples(self, buckets_seconds: Sequence[int]) -> int: ...  # the longest clip it scores
    def bucket_frames(self, n_samples: int, buckets_seconds: Sequence[int]) -> int: ...  # 10 ms frames of the clip's bucket
    def audio_slots(self, frames: int) -> int: ...  # prompt positions the audio of a bucket's clip takes at most
    def audio_token_count(self, n_samples: int) -> int: ...  # prompt positions of a clip's audio
    def text_tokens(self, question: str) -> int: ...  # prompt positions of a question besides the audio
    pad_token_id: int  # the id prompts are left-padded with for generation
    def decode(self, ids: Sequence[int]) -> str: ...  # answer text of generated ids
    def audio_offset(self) -> int: ...  # a lower bound of every prompt's first audio position
    def inputs(self, clips: Sequence[np.ndarray], questions: Sequence[str], frames: int, *,
               padding_side: str, silence: bool) -> ModelInputs: ...
    def video_context(self, params: Any, videos: Sequence[Any]) -> np.ndarray: ...  # [B, ...] per clip


class HFTokenizerAdapter:
    """The `ModelAdapter` pieces of a family whose tokenizer is a Hugging Face one (`self.tokenizer`)."""

    tokenizer: Any

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text of generated ids (special tokens dropped)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()
