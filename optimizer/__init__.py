"""optimizer: ahead-of-time compiler and model optimizer for LLMs.

The flow (see README.md):
    HF folder / GGUF / named config -> torch module          (optimizer.models)
    torch module -> ONNX graph (onnx_ir)                     (optimizer.capture)
    ONNX graph -> passes                                     (passes)
    graph + tokenizer + manifest -> engine directory         (optimizer.core.artifact)
    engine directory -> onnxruntime session -> generation    (runtime)
"""

__version__ = "0.1.0"
