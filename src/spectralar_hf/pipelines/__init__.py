from .pipeline_spectralar import SpectralARPipeline, SpectralARPipelineOutput, SuperResolutionOutput, check_components

__all__ = ["SpectralARPipeline", "SpectralARPipelineOutput", "SuperResolutionOutput", "check_components"]

from .pipeline_far import FARPipeline, FARPipelineOutput  # noqa: E402

__all__ += ["FARPipeline", "FARPipelineOutput"]
