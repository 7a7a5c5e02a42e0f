"""The time grids, defined once: 16 kHz samples, 100 mel frames and 25 audio tokens per second
(Qwen2-Audio), and the codec's token rates r with 2 tokens per frame of 2 / r seconds (SemantiCodec).

Pure constants (no imports), so the codec sidecar, the data loaders and the scoring program share them.
The PyTorch reference (`agac_jax.reference.torch_scores`) keeps its own copies on purpose: it is an
independent implementation to check this one against.
"""

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
MAX_SECONDS = 30
MAX_SAMPLES = MAX_SECONDS * SAMPLE_RATE
MAX_FRAMES = MAX_SAMPLES // HOP_LENGTH
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
SAMPLES_PER_AUDIO_TOKEN = 4 * HOP_LENGTH
CODEC_TOKEN_RATES = (25, 50, 100)
CODEC_TOKENS_PER_FRAME = 2
SELECTION_PAD_SECONDS = 5  # host-side selection pads clips to a multiple of this, so it compiles per 5 s
BUCKET_QUANTUM_SAMPLES = SELECTION_PAD_SECONDS * SAMPLE_RATE


def encoder_output_lengths(num_mel_frames):
    """(frames after the encoder's stride-2 conv, audio tokens after its stride-2 pooling) of
    `num_mel_frames` valid mel frames: transformers' `_get_feat_extract_output_lengths`, conv
    ``(L - 1) // 2 + 1`` then pooling ``(conv - 2) // 2 + 1``. Elementwise on ints, numpy or JAX arrays."""
    conv = (num_mel_frames - 1) // 2 + 1
    return conv, (conv - 2) // 2 + 1


def audio_tokens_of_samples(n_samples: int) -> int:
    """Audio tokens (25 a second) of a clip of `n_samples`: its ceil(n / 160) mel frames through
    `encoder_output_lengths`."""
    return encoder_output_lengths(-(-int(n_samples) // HOP_LENGTH))[1]
