"""What a user hands us and what we hand back, as files and in-memory types.

Holds: the shared types (:mod:`.artifact`: ``Artifact``, ``TensorSpec``), model specs and user code
(:mod:`.spec`), other exporters' ONNX files made regular (:mod:`.normalize`), the torch → ONNX converter
without verification (:mod:`.onnx_export`), input feeds (:mod:`.inputs`), realistic BN statistics for seeded
zoo weights (:mod:`.numerics`), the engine record beside a TensorRT engine (:mod:`.engine_record`), how every
file is written (:mod:`.files`: atomic writes, the one JSON policy, the cache folder), what a report records
of how it was made (:mod:`.provenance`) and the real PaddleOCR files (:mod:`.ppocr`).

May import: ``deploy.errors``, ``deploy.ort``, ``deploy.environment``, ``deploy.gpu``, ``deploy._version`` and
``deploy.passes/models/calib`` — nothing of the backends, the harness or the verbs.
"""
