"""The fields every sweep config starts from (big_vision's `configs/common.py`).

Launch configs (`configs/*.py: get_config(arg)`) call `base_config()` and override what they need.
Scoring defaults are not restated here: each comes from `agac_jax.scoring.settings.ScoringConfig`,
where it is written once and commented.
"""

from __future__ import annotations

import ml_collections

from agac_jax.scoring.settings import DEFAULT_RHOS, MESH_AXES, POOLED_METHODS, SELECTION_METHODS, ScoringConfig

_SCORING = ScoringConfig()


def base_config() -> ml_collections.ConfigDict:
    """The sweep config's fields with ScoringConfig's defaults (DESIGN.md's, but for the local score)."""
    config = ml_collections.ConfigDict()

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "synthetic"  # a name of agac_jax.data.DATASETS: synthetic | clotho_aqa | avhbench
    config.dataset.root = ""  # data set directory; synthetic: a written split, "" generates it in memory
    config.dataset.split = "test"  # synthetic: train|validation|test; clotho_aqa: train|val|test
    config.dataset.task = "Audio-driven Video Hallucination"  # avhbench only: the task to evaluate
    config.dataset.num_clips = 12  # synthetic, generated: clips (1 or 2 questions each)
    config.dataset.generation_seed = 0  # synthetic, generated: the split's seed (fixed across sweep seeds)
    config.dataset.max_samples = 0  # evaluate the first N samples only; 0: all
    config.dataset.prompt_suffix = ml_collections.config_dict.placeholder(str)  # appended to every question and
    #   recorded; None: the data set's default (agac_jax.data.default_prompt_suffix): clotho_aqa lmms-eval's
    #   "\nAnswer the question using a single word only. ", the others nothing; "": nothing

    config.model = ml_collections.ConfigDict()
    config.model.kind = ""  # qwen2_audio | pandagpt (agac_jax.models.MODELS); "": told by checkpoint_dir's files
    config.model.checkpoint_dir = ""  # the model directory: Hugging Face Qwen2-Audio as downloaded, converted PandaGPT
    config.model.random_init = ""  # a config json of the family `kind`: a random tiny model of it instead
    config.model.seed = 0  # of random_init's weights
    config.model.param_dtype = "float32"  # float32 | bfloat16: dtype the weights are held in (bf16 halves them: 7B 16.8 GB)
    config.model.dtype = "float32"  # float32 | bfloat16: compute dtype (softmax, norms and logits stay float32)
    config.model.prompt_format = "chat"  # chat: the processor's chat template (Instruct); raw: the base model's
    #                                      "<|audio_bos|><|AUDIO|><|audio_eos|>" + question (agac_jax/models/qwen2_audio/prompts.py)
    config.model.scan_layers = False  # nn.scan over the decoder layers: faster compiles, same results (models/decoder.py)
    config.model.remat_layers = False  # rematerialise each decoder layer in gradients (IG memory), same results
    config.model.use_video = False  # the clips come with a video the model also sees (PandaGPT on AVHBench)

    config.scoring = ml_collections.ConfigDict()  # fields of ScoringConfig (defaults and meaning there)
    config.scoring.estimator = _SCORING.estimator  # AAD local score: occlusion (DESIGN.md) | integrated_gradients
    config.scoring.target = _SCORING.target  # what AAD contrasts: logp (DESIGN.md) | log_odds
    config.scoring.gate_domain = _SCORING.gate_domain  # where gates act: embedding (DESIGN.md) | input (log-mel)
    config.scoring.window = _SCORING.window  # occlusion window W in audio tokens
    config.scoring.ig_steps = _SCORING.ig_steps  # integrated gradients: midpoint-rule steps
    config.scoring.ig_chunk = ml_collections.config_dict.placeholder(int)  # IG steps vmapped together;
    #   None: 4 on CPU (scorer.CPU_IG_CHUNK), 1 on accelerators (a 7B pass's activations each)
    config.scoring.local_sign = _SCORING.local_sign  # fusion reads the local score signed (DESIGN.md) | magnitude
    config.scoring.local_smooth = _SCORING.local_smooth  # box filter over the local score, tokens (1: none)
    config.scoring.alpha = _SCORING.alpha  # `fused`: weight of the local (AAD) score; aad uses 1, attention 0
    config.scoring.fastv_layer = _SCORING.fastv_layer  # FastV's decoder layer K
    config.scoring.max_new_tokens = _SCORING.max_new_tokens  # greedy answer length limit
    config.scoring.max_text_tokens = _SCORING.max_text_tokens  # prompt tokens besides the audio placeholders
    config.scoring.batch_size = _SCORING.batch_size  # clips per compiled scoring / answering call
    config.scoring.occlusion_chunk = _SCORING.occlusion_chunk  # occlusion gate vectors evaluated together
    config.scoring.occlusion_segments = _SCORING.occlusion_segments  # 0: a step per chunk; k: k loops (7B compiles)
    config.scoring.prompt_steps = _SCORING.prompt_steps  # a batch's prompt slots: this many steps per bucket
    config.scoring.prompt_step_ratio = _SCORING.prompt_step_ratio  # each prompt step's share of the next
    config.scoring.cpu_memory_budget = _SCORING.cpu_memory_budget  # CPU: warn above this share of RAM
    config.scoring.buckets_seconds = _SCORING.buckets_seconds  # clip length buckets, one compiled program each

    config.mesh = ml_collections.ConfigDict()
    config.mesh.axes = MESH_AXES  # fixed: batch on 'data', wide parameter axes on 'model'
    config.mesh.shape = _SCORING.mesh_shape  # devices on (data, model); their product <= local devices
    config.mesh.logical_axis_rules = _SCORING.axis_rules  # logical parameter axis -> mesh axis (or None);
    #   head axes split in whole heads, an axis a mesh axis cannot split hands it to the weight's other one
    config.mesh.fsdp = _SCORING.fsdp  # True: also split every weight's model width ('embed') over 'data'
    #   (FSDP, gathered where used): for a small 'model' axis and a large batch (bench/README.md, "What fits where")

    config.methods = ("original", "codec") + tuple(m for m in SELECTION_METHODS if m not in POOLED_METHODS)
    #   DESIGN.md section 4's; rho = 1 of every selecting method is `codec`; the adaptive ones
    #   (adaptive_mass, adaptive_pool, adaptive_kind) are asked for by name
    config.kind_weights = ()  # adaptive_kind: ((question kind, weight), ...), calibrated on a validation
    #                           split (configs/estimator_study.py:kinds); an unlisted kind, or none, weighs 1
    config.rates = _SCORING.rates  # codec token rates r (tokens/s; a frame is 2 / r s)
    config.rhos = (1.0, 0.9, 0.7)  # keep ratios, exact as written
    config.seeds = (0, 1, 2)  # change `random` (and a stochastic codec's draw); the split stays fixed

    config.codec = ml_collections.ConfigDict()
    config.codec.backend = "rvq_mel"  # rvq_mel (offline, not SemantiCodec) | semanticodec
    config.codec.options = ml_collections.ConfigDict()  # backend options, see agac_jax.codec.backends
    config.codec.deterministic = True  # same input -> same output, so identical compressed clips are shared
    config.codec.crossfade_ms = 5.0  # raised-cosine crossfade at each cut between kept runs
    config.codec.python = ""  # the sidecar's interpreter ("": this one); semanticodec: ".venv-codec/bin/python" (tools/setup_codec_env.sh)

    config.curves = ml_collections.ConfigDict()  # deletion/insertion curves (eval/sweep_curves.py); not fingerprinted
    config.curves.enabled = False  # per scored sample and method: 2 x (len(rhos) - 2) altered clips answered, no codec
    config.curves.methods = ()  # selecting methods to curve; (): every one of config.methods
    config.curves.rate = 50  # the codec frame grid the methods rank (tokens/s)
    config.curves.rhos = DEFAULT_RHOS  # increasing from 0 to 1

    config.runtime = ml_collections.ConfigDict()  # not part of the fingerprint: cannot change a result
    config.runtime.batch_samples = 8  # samples loaded, answered and scored together
    config.runtime.codec_max_in_flight = 4  # codec requests sent to the sidecar ahead of their replies
    config.runtime.pipeline_codec = True  # compress a batch while the next one is scored (False: one after the other)
    config.runtime.codec_max_backlog = 256  # compressed clips queued or in the codec before the sweep waits for them
    config.runtime.codec_timeout_s = 300.0  # seconds the sidecar may take for one request
    config.runtime.codec_num_threads = 1  # torch threads in the sidecar
    config.runtime.progress_log_every_s = 30.0  # log line interval when stderr is not a terminal
    config.runtime.retry_failed = False  # redo recorded failures on a restart
    config.runtime.distributed = False  # call jax.distributed.initialize(): one process per host, each its own shard
    # Coordinator of a multi-process run ("" / -1: found by JAX in the environment, as on a TPU pod, under
    # SLURM or Open MPI; give all three elsewhere, e.g. a GPU cluster without a scheduler JAX knows):
    config.runtime.coordinator_address = ""  # host:port of process 0's coordinator, the same on every process
    config.runtime.num_processes = -1  # processes (hosts) in the run
    config.runtime.process_id = -1  # this process's index in [0, num_processes); its shard and results file
    config.runtime.coordinator_bind_address = ""  # where process 0 listens; "": the coordinator address itself
    #                                                (0.0.0.0:PORT or [::]:PORT: every interface, only when asked)
    config.runtime.initialization_timeout_s = 300  # seconds to wait for every process to join
    config.runtime.heartbeat_timeout_s = 100  # seconds without a heartbeat before a process counts as lost
    return config
