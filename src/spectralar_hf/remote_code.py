"""Loading our checkpoints through the ecosystem's generic entry points (`trust_remote_code=True`).

`save_pretrained` writes a small module file next to the configs and points the generic loaders at it:

- a model folder: `config.json` gets an `auto_map` for transformers' Auto classes, e.g. `{"AutoConfig":
  "modeling_spectralar.SpectralARConfig", "AutoModelForCausalLM": "modeling_spectralar.SpectralARForCausalLM"}`, and
  `modeling_spectralar.py` imports those classes from the installed package;
- a pipeline folder: `model_index.json` names the pipeline as `["pipeline_spectralar", "SpectralARPipeline"]`
  (diffusers' custom-pipeline form) and `pipeline_spectralar.py` imports the class from the installed package.

The module files hold no model code, so the checkpoint always runs the installed `spectralar_hf`; without it they
raise an import error that gives the install command. Our own `from_pretrained` never executes them.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

PACKAGE = "spectralar_hf"
INSTALL_COMMAND = "pip install spectralar_hf"

# model_type -> (module file written into the model folder, {transformers Auto class: our class})
MODEL_AUTO_CLASSES: dict[str, tuple[str, dict[str, str]]] = {
    "spectral_tokenizer": ("modeling_spectral_tokenizer",
                           {"AutoConfig": "SpectralTokenizerConfig", "AutoModel": "SpectralTokenizer"}),
    "spectralar": ("modeling_spectralar",
                   {"AutoConfig": "SpectralARConfig", "AutoModel": "SpectralARForCausalLM",
                    "AutoModelForCausalLM": "SpectralARForCausalLM"}),
    "far": ("modeling_far", {"AutoConfig": "FARConfig", "AutoModel": "FARTransformer"}),
    "maskgit_vqgan": ("modeling_maskgit_vqgan", {"AutoConfig": "MaskGITVQGANConfig", "AutoModel": "MaskGITVQGAN"}),
}

# pipeline class -> module file written into the pipeline folder (model_index.json's `_class_name[0]`)
PIPELINE_MODULES: dict[str, str] = {"SpectralARPipeline": "pipeline_spectralar", "FARPipeline": "pipeline_far"}

MODULE_TEMPLATE = '''"""{docstring}
"""

MISSING_PACKAGE = "{missing}"

try:
    from spectralar_hf import {names}
except ModuleNotFoundError as error:
    if error.name != "spectralar_hf":
        raise
    raise ModuleNotFoundError(MISSING_PACKAGE, name="spectralar_hf") from None
'''

MISSING_PACKAGE = f"This checkpoint needs the spectralar_hf package, which is not installed: {INSTALL_COMMAND}"


def module_source(names: list[str], purpose: str) -> str:
    """The text of a module file that imports `names` from the installed package."""
    docstring = textwrap.fill(f"{purpose} Written by spectralar_hf's save_pretrained: the code is the installed "
                              f"package's, not this file's ({INSTALL_COMMAND}).", width=116)
    return MODULE_TEMPLATE.format(docstring=docstring, names=", ".join(names), missing=MISSING_PACKAGE)


def _write(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def model_auto_map(model_type: str) -> dict[str, str]:
    """`config.json`'s `auto_map` for a model of `model_type`: Auto class -> `"module.Class"`."""
    module, classes = MODEL_AUTO_CLASSES[model_type]
    return {auto_class: f"{module}.{name}" for auto_class, name in classes.items()}


def write_model_module(save_directory: str | os.PathLike, model_type: str) -> Path:
    """Write the module file that `config.json`'s `auto_map` names; returns its path."""
    module, classes = MODEL_AUTO_CLASSES[model_type]
    names = sorted(set(classes.values()))
    purpose = (f"transformers' Auto classes (AutoConfig, {', '.join(a for a in classes if a != 'AutoConfig')}) with "
               f"trust_remote_code=True load this folder's {classes['AutoModel']} from the spectralar_hf package.")
    path = Path(save_directory) / f"{module}.py"
    _write(path, module_source(names, purpose))
    return path


def write_pipeline_module(save_directory: str | os.PathLike, pipeline_class: str) -> Path:
    """Write the module file that `model_index.json`'s `_class_name` names; returns its path."""
    purpose = (f"diffusers' DiffusionPipeline.from_pretrained(..., trust_remote_code=True) loads this folder as the "
               f"{pipeline_class} of the spectralar_hf package.")
    path = Path(save_directory) / f"{PIPELINE_MODULES[pipeline_class]}.py"
    _write(path, module_source([pipeline_class], purpose))
    return path


def check_auto_class(cls: type, model_type: str, auto_class) -> None:
    """`register_for_auto_class` of our configs and models: the Auto class must be one of ours for `model_type`."""
    name = auto_class if isinstance(auto_class, str) else getattr(auto_class, "__name__", repr(auto_class))
    known = MODEL_AUTO_CLASSES[model_type][1]
    if name not in known:
        raise ValueError(f"{cls.__name__} loads through {sorted(known)}, not {name}; its auto_map is written by "
                         f"save_pretrained.")


class AutoMapConfigMixin:
    """For our `PreTrainedConfig`s: `config.json` carries the `auto_map` of `remote_code` and `save_pretrained` writes
    its module file, so `AutoConfig` / `AutoModel` load the folder with `trust_remote_code=True` in a process that did
    not import `spectralar_hf`."""

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # our auto_map is not a setting: to_json_string writes it, so a loaded config equals the saved one
        auto_map = config_dict.get("auto_map")
        if isinstance(auto_map, dict):
            ours = model_auto_map(cls.model_type)
            config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
            others = {name: ref for name, ref in auto_map.items() if ours.get(name) != ref}
            if others:
                config_dict["auto_map"] = others
        return super().from_dict(config_dict, **kwargs)

    def to_json_string(self, use_diff: bool = True) -> str:
        config = json.loads(super().to_json_string(use_diff))
        config["auto_map"] = {**(config.get("auto_map") or {}), **model_auto_map(self.model_type)}
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        if push_to_hub:
            raise ValueError(f"{type(self).__name__}.save_pretrained(push_to_hub=True) would upload a config without "
                             f"its weights or model card; push the model instead: model.push_to_hub(repo_id).")
        super().save_pretrained(save_directory, **kwargs)
        write_model_module(save_directory, self.model_type)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """Checks `auto_class` only: transformers' version would make `save_pretrained` copy our source files (which
        import the rest of the package relatively) instead of writing the `auto_map` of `remote_code`."""
        check_auto_class(cls, cls.model_type, auto_class)
