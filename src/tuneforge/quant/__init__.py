"""4-bit / 8-bit base weights for QLoRA and 8-bit optimizer states, through bitsandbytes (an optional
dependency: `pip install bitsandbytes`; nothing here imports it until it is used)."""
from .layers import (  # noqa: F401
    COMPUTE_DTYPES,
    QUANTIZATIONS,
    QuantSpec,
    dequantize_model,
    dequantized,
    is_quantized,
    quantization_of,
    quantize_model,
    require_bitsandbytes,
    weight_bytes,
)
from .optimizers import OPTIMIZERS, build_8bit_optimizer  # noqa: F401
