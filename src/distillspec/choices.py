"""The names a user chooses among: quantization forms, linear layouts, divergences, data
sources, dtypes.

Why a leaf of its own: the command-line parsers need these names to build `--help`, and the
modules that act on them import torch. Defined here, both read the same tuples and `--help`
runs without importing torch (see `distillspec.lazy`).
"""

#: draft quantization forms (models.quant)
QUANT_CHOICES = ("none", "int8", "w8a8")
#: forms a target may take: w8a8's activation scale depends on the whole pass, so a target
#: quantized that way would score a token differently in a verify pass than alone.
TARGET_QUANT_CHOICES = ("none", "int8")
#: what a draft may ask for: a form, or 'auto', the form timed cheapest on this CPU
#: (models.draft_format; the default pair's draft)
DRAFT_QUANT_CHOICES = QUANT_CHOICES + ("auto",)
#: how linear layers multiply (models.layout)
LAYOUT_CHOICES = ("auto", "fastest", "default", "weight-left", "fp32-prefill", "compiled")
#: model backends (engine.backend): torch/HF, or llama.cpp running a GGUF as published
BACKENDS = ("torch", "llama.cpp")
#: what --backend takes: a backend, or 'auto' (models.backend_choice: llama.cpp for a GGUF on the CPU)
BACKEND_CHOICES = ("auto",) + BACKENDS
#: GGUF file types a draft export writes (llama.cpp's LLAMA_FTYPE_MOSTLY_* names; models.gguf_export);
#: 'base' keeps the base file's type
GGUF_TYPES = ("base", "f16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0")
#: how a GGUF delta stores its changes' factors (`models.gguf_delta`); the first is the default
FACTOR_TYPES = ("int8", "float16")
#: distillation divergences (distill.divergences)
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")
#: what a run may minimise: a divergence, or 'ce', the supervised (cross-entropy) baseline
LOSSES = DIVERGENCES + ("ce",)
#: where training completions come from (distill.batches)
DATA_SOURCES = ("fixed", "target", "draft", "mixed")
OFF_POLICY_SOURCES = ("fixed", "target")
#: the weight dtypes a torch model may load in (models.load.DTYPES maps them to torch's)
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
#: the distillation target's weights
TARGET_DTYPES = ("float32", "bfloat16", "auto")
#: what runs the target during distillation: torch (the dequantized model) or llama.cpp (its GGUF)
TEACHER_BACKENDS = ("torch", "llama.cpp")
#: the largest sampling seed: what torch.Generator.manual_seed takes without overflow (seeds start at 0)
MAX_SEED = 2**63 - 1
#: what generate's and serve's --drafter take: the --draft model, prompt lookup, or lookup
#: where the context has a match and the --draft model elsewhere (engine.LookupFirstDrafter)
DRAFTER_CHOICES = ("model", "prompt-lookup", "lookup+model")
#: a draft spec's prefix that puts prompt lookup before its draft model: 'prompt-lookup+SPEC'
LOOKUP_FIRST = "prompt-lookup+"
