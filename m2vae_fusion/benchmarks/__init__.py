"""Benchmarks of the runtime and of training (``m2vae-fusion bench runtime``, ``m2vae-fusion bench training``).

- :mod:`.runtime`: fusion-node latency per input next to the bare onnxruntime and torch eager time of the same
  networks on the same observations, message sizes, the highest sustained camera rate, CPU and memory with 1…8
  agents, and the Fast DDS shared-memory profile's effect on a 640x480 round trip; targets with PASS/MISS.
- :mod:`.training`: data generation rate and per-stage training throughput and wall time.
- :mod:`.inference`: onnxruntime / torch timing of the networks one observation runs through (used by runtime).
- :mod:`.children`: the load generator and ping/pong processes the runtime benchmark starts.
- :mod:`.common`: tables, JSON, DDS isolation, process CPU/memory sampling.

Each of ``runtime`` and ``training`` is a ``m2vae-fusion bench`` module (``HELP``, ``configure``, ``run``) and can be
run alone: ``python -m m2vae_fusion.benchmarks.runtime --quick --json OUT``.
"""
