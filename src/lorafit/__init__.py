"""lorafit: LoRA-family fine-tuning of text classifiers under a trainable-parameter budget."""
import logging

__version__ = "0.1.0"


class _DropBnbKernelHubNote(logging.Filter):
    # bitsandbytes' CPU backend, imported by every `import peft` once bitsandbytes is installed, warns
    # that it could not fetch an optional kernel from the Hugging Face hub (package `kernels`); its own
    # 4-bit CPU path works without it. Unfiltered, that line lands on stderr of every lorafit command,
    # where the one-line error contract (and a user) would read it as a failure.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBnbKernelHubNote())
