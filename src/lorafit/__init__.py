"""lorafit: LoRA-family fine-tuning of text classifiers under a trainable-parameter budget."""
import logging
import os
import sys

__version__ = "0.1.0"

# The network: lorafit contacts the Hugging Face hub only for hub ids the user named (README, Network).
# Set here, before anything imports huggingface_hub, transformers, peft, bitsandbytes or mlflow:
if os.environ.get("LORAFIT_HUB_KERNELS") != "1":
    # bitsandbytes' CPU backend, imported by every `import peft` once bitsandbytes is installed, calls
    # kernels.get_kernel("kernels-community/quantization-bitsandbytes") at import on CPUs with avx512_bf16:
    # with the hub reachable that downloads and loads native code nobody asked for (offline it prints a
    # trust-check line on every command). None in sys.modules makes `import kernels` raise ImportError:
    # bitsandbytes falls back to its own 4-bit CPU path (what it runs offline anyway), and transformers'
    # is_kernels_available() (importlib.util.find_spec) is False. transformers' from_pretrained would
    # then refuse its default use_kernels=True, so its own switch turns hub kernels off too.
    # LORAFIT_HUB_KERNELS=1 leaves both libraries as they are.
    sys.modules.setdefault("kernels", None)
    os.environ["USE_HUB_KERNELS"] = "NO"
# Telemetry, on by default in these libraries; =0 / =false in the environment keeps it on. huggingface_hub:
# the first hub request also fetches {endpoint}/api/agent-harnesses for its user-agent. MLflow 3: each
# process sends usage records to mlflow-telemetry.io.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class _DropBnbKernelHubNote(logging.Filter):
    # bitsandbytes' CPU backend warns that it could not fetch that optional kernel (blocked above, or
    # offline); its own 4-bit CPU path works without it. Unfiltered, that line lands on stderr of every
    # lorafit command, where the one-line error contract (and a user) would read it as a failure.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBnbKernelHubNote())
