from .configuration_spectral_tokenizer import SPECTRAL_TOKENIZER_PRESETS, SpectralTokenizerConfig
from .modeling_spectral_tokenizer import (
    SpectralTokenizer,
    SpectralTokenizerDecoderOutput,
    SpectralTokenizerEncoderOutput,
    SpectralTokenizerOutput,
    SpectralTokenizerPreTrainedModel,
)

__all__ = [
    "SPECTRAL_TOKENIZER_PRESETS",
    "SpectralTokenizer",
    "SpectralTokenizerConfig",
    "SpectralTokenizerDecoderOutput",
    "SpectralTokenizerEncoderOutput",
    "SpectralTokenizerOutput",
    "SpectralTokenizerPreTrainedModel",
]
