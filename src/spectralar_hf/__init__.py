"""spectralar_hf: spectral autoregressive image generation (SpectralAR, FAR) for the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel  # noqa: F401  (diffusers looks up PreTrainedModel here)

from . import spectral
from .models.generator import SPECTRALAR_PRESETS, SpectralARCausalLMOutput, SpectralARConfig, SpectralARForCausalLM
from .pipelines import SpectralARPipeline, SpectralARPipelineOutput, SuperResolutionOutput
from .models.far import FAR_PRESETS, FARConfig, FAROutput, FARTransformer, build_noise_scheduler
from .pipelines import FARPipeline, FARPipelineOutput
from .models.tokenizer import (
    SPECTRAL_TOKENIZER_PRESETS,
    SpectralTokenizer,
    SpectralTokenizerConfig,
    SpectralTokenizerDecoderOutput,
    SpectralTokenizerEncoderOutput,
    SpectralTokenizerOutput,
)
from .models.vqgan import (
    MASKGIT_VQGAN_PRESETS,
    MaskGITVQGAN,
    MaskGITVQGANConfig,
    MaskGITVQGANDecoderOutput,
    MaskGITVQGANEncoderOutput,
    MaskGITVQGANOutput,
    PixelDecoder,
)

__version__ = "0.1.0"

AutoConfig.register(SpectralTokenizerConfig.model_type, SpectralTokenizerConfig, exist_ok=True)
AutoModel.register(SpectralTokenizerConfig, SpectralTokenizer, exist_ok=True)
AutoConfig.register(SpectralARConfig.model_type, SpectralARConfig, exist_ok=True)
AutoModel.register(SpectralARConfig, SpectralARForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(SpectralARConfig, SpectralARForCausalLM, exist_ok=True)
AutoConfig.register(FARConfig.model_type, FARConfig, exist_ok=True)
AutoModel.register(FARConfig, FARTransformer, exist_ok=True)
AutoConfig.register(MaskGITVQGANConfig.model_type, MaskGITVQGANConfig, exist_ok=True)
AutoModel.register(MaskGITVQGANConfig, MaskGITVQGAN, exist_ok=True)

__all__ = [
    "SPECTRALAR_PRESETS",
    "SpectralARCausalLMOutput",
    "SpectralARConfig",
    "SpectralARForCausalLM",
    "SpectralARPipeline",
    "SpectralARPipelineOutput",
    "SuperResolutionOutput",
    "SPECTRAL_TOKENIZER_PRESETS",
    "SpectralTokenizer",
    "SpectralTokenizerConfig",
    "SpectralTokenizerDecoderOutput",
    "SpectralTokenizerEncoderOutput",
    "SpectralTokenizerOutput",
    "spectral",
    "FAR_PRESETS",
    "FARConfig",
    "FAROutput",
    "FARPipeline",
    "FARPipelineOutput",
    "FARTransformer",
    "build_noise_scheduler",
    "MASKGIT_VQGAN_PRESETS",
    "MaskGITVQGAN",
    "MaskGITVQGANConfig",
    "MaskGITVQGANDecoderOutput",
    "MaskGITVQGANEncoderOutput",
    "MaskGITVQGANOutput",
    "PixelDecoder",
]
