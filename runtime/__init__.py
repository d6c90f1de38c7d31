"""Runtime: serve an engine directory with onnxruntime.

    from runtime import Engine, SamplingParams
    engine = Engine.load("engine/")
    result = engine.generate("The capital of France is", SamplingParams(max_new_tokens=16))
    print(result.text)
"""

from runtime.engine import Engine
from runtime.sampling import SamplingParams
from runtime.speculative import SpeculativeConfig

__all__ = ["Engine", "SamplingParams", "SpeculativeConfig"]
