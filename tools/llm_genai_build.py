"""onnxruntime-genai's model builder, run as `python -m onnxruntime_genai.models.builder ARGS`, with one fix
for Gemma3 under transformers 5.x (run this with the builder's environment: GENAI_PYTHON in llm_fixtures).

    python tools/llm_genai_build.py -i HF_FOLDER -o OUT -p fp32 -e cpu [--extra_options K=V ...]

transformers 5.x reads a Gemma3 config into rope_parameters nested per layer type
({"sliding_attention": {...}, "full_attention": {...}}) and drops rope_local_base_freq; the builder 0.18
indexes rope_parameters["rope_type"] and reads config.rope_local_base_freq, and fails with KeyError. The
config the builder gets is flattened back to the 4.x form (global rope as rope_parameters, the local base
as rope_local_base_freq); other configs pass unchanged, and the weights are read from the folder as usual.
"""
import runpy
import sys

import transformers

_from_pretrained = transformers.AutoConfig.from_pretrained.__func__


def _flat_gemma3_rope(cls, *args, **kwargs):
    config = _from_pretrained(cls, *args, **kwargs)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope and "sliding_attention" in rope:
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])
    return config


transformers.AutoConfig.from_pretrained = classmethod(_flat_gemma3_rope)
sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
