from .configuration_spectralar import SPECTRALAR_PRESETS, SpectralARConfig
from .modeling_spectralar import (
    SpectralARCausalLMOutput,
    SpectralARForCausalLM,
    SpectralARPreTrainedModel,
)

__all__ = [
    "SPECTRALAR_PRESETS",
    "SpectralARCausalLMOutput",
    "SpectralARConfig",
    "SpectralARForCausalLM",
    "SpectralARPreTrainedModel",
]
