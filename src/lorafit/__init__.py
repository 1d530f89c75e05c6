"""lorafit: LoRA-family fine-tuning of text classifiers under a trainable-parameter budget."""
__version__ = "0.1.0"
