"""Pure-data diagnostics, importable by every layer above them: memory snapshots (``memory``: the one
GPU-memory reader), SGLang's TP balance rule and pre-flight (``balance``), phase timing (``timing``) and
model FLOPs / MFU (``flops``)."""
