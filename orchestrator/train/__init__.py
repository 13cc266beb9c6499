"""The trainer: one attempt of a PretrainJob on Ray Train + DeepSpeed.

Subpackages, by concern (imports go driver -> worker -> checkpoint, never back):

* ``driver``     the attempt's process (``python -m orchestrator.train``): starts or joins Ray,
                 runs the ``TorchTrainer``, maps how it ended to a contract exit code.
* ``worker``     the loop every Ray Train worker runs: model, DeepSpeed engine, the step, metrics,
                 preemption notices, and the typed errors that stop a run.
* ``checkpoint`` transactional checkpoints: the storage side (``store``), the collective side
                 (``Checkpointer``), async upload, snapshots, elastic resume, RNG, the interval.

Top-level modules: ``heartbeat`` (the client driver and worker report through) and ``export``
(a committed checkpoint -> a Hugging Face model directory). Importing this package imports
neither torch nor Ray.
"""
