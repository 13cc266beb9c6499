"""bertctl: preemption-proof BERT pretraining on Ray Train + DeepSpeed."""

__version__ = "0.1.0"
