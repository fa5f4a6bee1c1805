from .configuration_far import FAR_PRESETS, FARConfig
from .modeling_far import (
    DiffusionTables,
    FARDiffusionHead,
    FAROutput,
    FARPreTrainedModel,
    FARTransformer,
    build_noise_scheduler,
    check_scheduler,
)

__all__ = [
    "FAR_PRESETS",
    "DiffusionTables",
    "FARConfig",
    "FARDiffusionHead",
    "FAROutput",
    "FARPreTrainedModel",
    "FARTransformer",
    "build_noise_scheduler",
    "check_scheduler",
]
