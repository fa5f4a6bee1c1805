"""transformers' Auto classes (AutoConfig, AutoModel) with trust_remote_code=True load this folder's FARTransformer
from the spectralar_hf package. Written by spectralar_hf's save_pretrained: the code is the installed package's, not
this file's (pip install spectralar_hf).
"""

MISSING_PACKAGE = "This checkpoint needs the spectralar_hf package, which is not installed: pip install spectralar_hf"

try:
    from spectralar_hf import FARConfig, FARTransformer
except ModuleNotFoundError as error:
    if error.name != "spectralar_hf":
        raise
    raise ModuleNotFoundError(MISSING_PACKAGE, name="spectralar_hf") from None
