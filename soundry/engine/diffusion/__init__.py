"""The diffusion family's engine: per-row samplers (each request at its own step of its own schedule, with its
own noise source), a batch that steps rows of any mix, the reference ``generate`` and the continuous-batching
``DiffusionEngine``."""
