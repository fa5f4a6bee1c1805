"""The ecosystem's generic entry points load our checkpoints (issue 26).

- In a fresh process that never imports `spectralar_hf` itself, `DiffusionPipeline.from_pretrained(...,
  trust_remote_code=True)` returns our pipelines (the shipped demos, freshly saved tiny ones, a text FAR) and
  transformers' `AutoConfig` / `AutoModel` / `AutoModelForCausalLM` return our models; their images, codes, latents
  and logits equal, byte for byte, those of our own classes on the same inputs (computed in that process after the
  generic loads). Without the package the module files name the install command.
- Our own `from_pretrained` loads old-format folders and never runs a folder's module file.
- Offload: each component's accelerate hook fires while the pipeline runs (`sample` / `encode` / `decode` go through
  them); sequential offload (weights on the meta device until a submodule runs) gives the same images.
- `pipe.interrupt` from a step callback stops generation; FAR's text mode takes `num_images_per_prompt`.
- Model cards on every push path: the install line, `library_name: spectralar_hf`, tags that match the model.
"""

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import cpu_offload
from accelerate.hooks import CpuOffload
from huggingface_hub import HfApi
from transformers import BertConfig, BertModel, BertTokenizer

from spectralar_hf import (
    FARConfig,
    FARPipeline,
    FARTransformer,
    MaskGITVQGAN,
    MaskGITVQGANConfig,
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
    build_noise_scheduler,
)
from spectralar_hf.remote_code import INSTALL_COMMAND

ROOT = Path(__file__).resolve().parents[1]
SAR_DEMO = ROOT / "checkpoints" / "spectralar-fashion-mnist"
FAR_DEMO = ROOT / "checkpoints" / "far-fashion-mnist"
FAST = dict(num_inference_steps=2, diffusion_steps=3)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "up", "down", "boot", "shirt"]

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spread(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random non-zero weights everywhere (zero-initialised layers would make every output the same)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("log_scale"):
                parameter.normal_(0.0, std)
    return model.eval()


def tiny_sar() -> SpectralARPipeline:
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).eval()
    config = SpectralARConfig.from_preset("tiny", image_size=32, num_channels=3, id2label={0: "up", 1: "down"},
                                          num_classes=2)
    pipe = SpectralARPipeline(tokenizer=tokenizer, transformer=spread(SpectralARForCausalLM(config), 0.15))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                         latent_channels=2, norm_num_groups=4, sample_size=16).eval()  # 16 px -> 4x4 latents


def far_config(**overrides) -> FARConfig:
    values = dict(latent_channels=2, latent_size=4, num_classes=2, class_buffer_size=2, hidden_size=32,
                  encoder_layers=1, decoder_layers=1, num_attention_heads=2, head_depth=2, head_width=32,
                  diffusion_batch_mul=1, beta_schedule="linear", class_dropout_prob=0.1)
    values.update(overrides)
    return FARConfig(**values)


def tiny_far(text_dir: Path | None = None) -> FARPipeline:
    """A class-conditional FAR pipeline, or (with `text_dir`) a text-only one with a tiny BERT text encoder."""
    text = {}
    config = far_config()
    if text_dir is not None:
        text = dict(text_encoder=BertModel.from_pretrained(text_dir).eval(), tokenizer=BertTokenizer.from_pretrained(
            text_dir))
        config = far_config(num_classes=0, cross_attention_dim=32)
    transformer = spread(FARTransformer(config))
    pipe = FARPipeline(vae=tiny_vae(), transformer=transformer, scheduler=build_noise_scheduler(config), **text)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bert")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(root / "vocab.txt"), model_max_length=8).save_pretrained(root)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def saved(tmp_path_factory, text_dir) -> Path:
    """Folders written by our save_pretrained: three pipelines and a MaskGIT-VQGAN."""
    root = tmp_path_factory.mktemp("saved")
    tiny_sar().save_pretrained(root / "sar")
    tiny_far().save_pretrained(root / "far")
    tiny_far(text_dir).save_pretrained(root / "far-text")
    spread(MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny"))).save_pretrained(root / "vqgan")
    return root


# ---------------------------------------------------------------------------------------------------------------
# the generic loaders in a process that does not import spectralar_hf
# ---------------------------------------------------------------------------------------------------------------

# Phase 1 loads everything through diffusers' / transformers' generic entry points and records the outputs; only then
# phase 2 imports spectralar_hf and computes the same outputs with our classes. The first load is an Auto class, so
# the remote-code path runs from a clean process; every auto_map entry is then resolved by transformers'
# get_class_from_dynamic_module (what the Auto classes call on that path).
GENERIC_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    torch.set_num_threads(1)
    paths, out = json.loads(sys.argv[1]), sys.argv[2]
    assert "spectralar_hf" not in sys.modules
    seeded = lambda: torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 1, 32, 32, generator=seeded()) * 2 - 1
    vq_pixels = torch.rand(1, 3, 16, 16, generator=seeded())
    codes = torch.randint(0, 4096, (2, 8), generator=seeded())
    FAST = dict(num_inference_steps=2, diffusion_steps=3)
    calls = {  # pipeline folder -> its call
        "sar_demo": lambda pipe: pipe([0, 7], generator=seeded(), output_type="np"),
        "far_demo": lambda pipe: pipe([0, 7], generator=seeded(), output_type="np", **FAST),
        "sar_tiny": lambda pipe: pipe(["up", 1], generator=seeded(), output_type="np"),
        "far_tiny": lambda pipe: pipe([0, 1], guidance_scale=2.0, generator=seeded(), output_type="np", **FAST),
        "far_text": lambda pipe: pipe(prompt=["up", "a boot"], num_images_per_prompt=2, guidance_scale=2.0,
                                      generator=seeded(), output_type="np", **FAST),
    }

    def model_outputs(kind, model):
        with torch.no_grad():
            if kind == "tokenizer":
                return model.decode(model.encode(pixels).codes, num_tokens=4).reconstruction
            if kind == "generator":
                return model(input_ids=codes, class_labels=torch.tensor([0, 7])).logits
            if kind == "far":
                return model.sample([0, 7], num_steps=2, diffusion_steps=3, generator=seeded())
            return model(vq_pixels).reconstruction

    def run(load_pipeline, load_model):
        results, classes = {}, {}
        for kind, path in paths["models"].items():
            model = load_model(kind, path)
            classes[kind] = f"{type(model).__module__}.{type(model).__name__}"
            results[kind] = model_outputs(kind, model).numpy()
        for name, path in paths["pipelines"].items():
            pipe = load_pipeline(name, path)
            pipe.set_progress_bar_config(disable=True)
            classes[name] = f"{type(pipe).__module__}.{type(pipe).__name__}"
            output = calls[name](pipe)
            results[name] = output.images
            extra = getattr(output, "codes", None) if getattr(output, "codes", None) is not None else output.latents
            results[name + "_codes"] = extra.numpy()
        return results, classes

    # phase 1: the generic entry points only
    first = AutoModelForCausalLM.from_pretrained(paths["models"]["generator"], trust_remote_code=True)
    report = {"first_load": f"{type(first).__module__}.{type(first).__name__}", "auto_map": {}}
    for kind, path in paths["models"].items():
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        report["auto_map"][kind] = {auto: get_class_from_dynamic_module(ref, path).__name__
                                    for auto, ref in json.load(open(path + "/config.json"))["auto_map"].items()}
    report["generator_auto_model"] = type(AutoModel.from_pretrained(paths["models"]["generator"],
                                                                    trust_remote_code=True)).__name__
    first.save_pretrained(out + ".resaved")  # a model the Auto classes loaded saves our module file, no source copy
    report["resaved"] = sorted(os.listdir(out + ".resaved"))
    auto = {"generator": AutoModelForCausalLM}
    generic, report["generic"] = run(
        lambda name, path: DiffusionPipeline.from_pretrained(path, trust_remote_code=True),
        lambda kind, path: auto.get(kind, AutoModel).from_pretrained(path, trust_remote_code=True).eval())

    # phase 2: our own classes
    import spectralar_hf
    ours = {"tokenizer": spectralar_hf.SpectralTokenizer, "generator": spectralar_hf.SpectralARForCausalLM,
            "far": spectralar_hf.FARTransformer, "vqgan": spectralar_hf.MaskGITVQGAN}
    pipelines = {"sar": spectralar_hf.SpectralARPipeline, "far": spectralar_hf.FARPipeline}
    own, report["ours"] = run(
        lambda name, path: pipelines[name.split("_")[0]].from_pretrained(path),
        lambda kind, path: ours[kind].from_pretrained(path).eval())
    np.savez(out, **{f"generic/{k}": v for k, v in generic.items()}, **{f"ours/{k}": v for k, v in own.items()})
    print(json.dumps(report))
''')


def run_python(script: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)


def test_generic_loaders_give_our_classes_and_the_same_outputs(saved, tmp_path):
    # the script must not import spectralar_hf itself (only the folders' module files do)
    assert "import spectralar_hf" not in GENERIC_SCRIPT.split("# phase 2")[0]
    paths = {
        "models": {"tokenizer": str(SAR_DEMO / "tokenizer"), "generator": str(SAR_DEMO / "transformer"),
                   "far": str(FAR_DEMO / "transformer"), "vqgan": str(saved / "vqgan")},
        "pipelines": {"sar_demo": str(SAR_DEMO), "far_demo": str(FAR_DEMO), "sar_tiny": str(saved / "sar"),
                      "far_tiny": str(saved / "far"), "far_text": str(saved / "far-text")},
    }
    result = run_python(GENERIC_SCRIPT, json.dumps(paths), str(tmp_path / "out.npz"), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["first_load"] == "spectralar_hf.models.generator.modeling_spectralar.SpectralARForCausalLM"
    assert report["auto_map"] == {
        "tokenizer": {"AutoConfig": "SpectralTokenizerConfig", "AutoModel": "SpectralTokenizer"},
        "generator": {"AutoConfig": "SpectralARConfig", "AutoModel": "SpectralARForCausalLM",
                      "AutoModelForCausalLM": "SpectralARForCausalLM"},
        "far": {"AutoConfig": "FARConfig", "AutoModel": "FARTransformer"},
        "vqgan": {"AutoConfig": "MaskGITVQGANConfig", "AutoModel": "MaskGITVQGAN"},
    }
    assert report["generator_auto_model"] == "SpectralARForCausalLM"
    assert report["resaved"] == ["config.json", "generation_config.json", "model.safetensors", "modeling_spectralar.py"]
    assert report["generic"] == report["ours"]
    assert report["generic"]["sar_demo"] == "spectralar_hf.pipelines.pipeline_spectralar.SpectralARPipeline"
    assert report["generic"]["far_text"] == "spectralar_hf.pipelines.pipeline_far.FARPipeline"

    outputs = np.load(tmp_path / "out.npz")
    names = sorted(key.split("/", 1)[1] for key in outputs.files if key.startswith("generic/"))
    assert len(names) == 4 + 2 * 5
    for name in names:
        generic, own = outputs[f"generic/{name}"], outputs[f"ours/{name}"]
        assert generic.dtype == own.dtype and np.array_equal(generic, own), name
        assert np.isfinite(generic).all() and generic.std() > 0, name  # not a constant output
    assert outputs["generic/far_text"].shape == (4, 16, 16, 3)  # 2 prompts x num_images_per_prompt=2


MISSING_PACKAGE_SCRIPT = textwrap.dedent('''
    import json, sys

    class NotInstalled:  # what Python does when spectralar_hf is not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "spectralar_hf":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NotInstalled())
    from diffusers import DiffusionPipeline
    from transformers import AutoModel

    errors = {}
    for name, load in [("pipeline", lambda: DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)),
                       ("model", lambda: AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True))]:
        try:
            load()
            errors[name] = None
        except ImportError as error:
            errors[name] = f"{type(error).__name__}: {error}"
    print(json.dumps(errors))
''')


def test_without_the_package_the_error_names_the_install_command(tmp_path):
    result = run_python(MISSING_PACKAGE_SCRIPT, str(FAR_DEMO), str(SAR_DEMO / "tokenizer"), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("pipeline", "model"):
        assert errors[name] is not None and errors[name].startswith("ModuleNotFoundError: This checkpoint needs the "
                                                                    "spectralar_hf package"), errors
        assert INSTALL_COMMAND in errors[name]


# ---------------------------------------------------------------------------------------------------------------
# what save_pretrained writes; our own loader with old and new folders
# ---------------------------------------------------------------------------------------------------------------

def test_saved_folders_name_the_module_files_they_hold(saved):
    index = json.loads((saved / "sar" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_spectralar", "SpectralARPipeline"]
    assert "from spectralar_hf import SpectralARPipeline" in (saved / "sar" / "pipeline_spectralar.py").read_text()
    assert json.loads((saved / "far" / "model_index.json").read_text())["_class_name"] == ["pipeline_far",
                                                                                            "FARPipeline"]
    for folder, module in [("sar/tokenizer", "modeling_spectral_tokenizer"), ("sar/transformer", "modeling_spectralar"),
                           ("far/transformer", "modeling_far"), ("vqgan", "modeling_maskgit_vqgan")]:
        auto_map = json.loads((saved / folder / "config.json").read_text())["auto_map"]
        assert {ref.split(".")[0] for ref in auto_map.values()} == {module} and "AutoModel" in auto_map
        assert (saved / folder / f"{module}.py").is_file()
    # the shipped demos are in the same form (metadata updated, weights untouched)
    for demo, module in [(SAR_DEMO, "pipeline_spectralar"), (FAR_DEMO, "pipeline_far")]:
        assert json.loads((demo / "model_index.json").read_text())["_class_name"][0] == module
        assert (demo / f"{module}.py").is_file()
    # the in-memory config does not gain the auto_map (a loaded config equals the saved one)
    loaded = SpectralARConfig.from_pretrained(saved / "sar" / "transformer")
    assert not hasattr(loaded, "auto_map") and "auto_map" in loaded.to_json_string()


def test_our_loader_reads_old_folders_and_never_runs_module_files(saved, tmp_path):
    import shutil

    reference = SpectralARPipeline.from_pretrained(saved / "sar")([0, 1], generator=seeded(5), output_type="np").images
    old = tmp_path / "old"
    shutil.copytree(saved / "sar", old)
    index = json.loads((old / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps({**index, "_class_name": "SpectralARPipeline"}))
    for module in old.rglob("*.py"):
        module.unlink()
    for folder in ("tokenizer", "transformer"):
        config = json.loads((old / folder / "config.json").read_text())
        config.pop("auto_map")
        (old / folder / "config.json").write_text(json.dumps(config))
    assert np.array_equal(SpectralARPipeline.from_pretrained(old)([0, 1], generator=seeded(5),
                                                                  output_type="np").images, reference)

    planted = tmp_path / "planted"  # a module file that would fail if anything executed it
    shutil.copytree(saved / "sar", planted)
    (planted / "pipeline_spectralar.py").write_text("raise RuntimeError('executed')\n")
    pipe = SpectralARPipeline.from_pretrained(planted)
    assert np.array_equal(pipe([0, 1], generator=seeded(5), output_type="np").images, reference)


# ---------------------------------------------------------------------------------------------------------------
# offload hooks, interrupt, num_images_per_prompt
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def hook_calls(monkeypatch) -> collections.Counter:
    """Counts accelerate's model-offload hook (`CpuOffload.pre_forward`, what moves a component onto the execution
    device under `enable_model_cpu_offload`) by component class."""
    calls = collections.Counter()
    original = CpuOffload.pre_forward

    def counting(self, module, *args, **kwargs):
        calls[type(module).__name__] += 1
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", counting)
    return calls


@pytest.mark.parametrize("kind", ["sar", "far"])
def test_model_cpu_offload_moves_each_component_when_it_runs(kind, hook_calls):
    # On CPU the execution device is passed explicitly (diffusers refuses to guess one without an accelerator); the
    # hooks then run exactly as on a GPU, moving a component to "cpu:0" and offloading the previous one.
    pipe = tiny_sar() if kind == "sar" else tiny_far()
    call = (lambda: pipe([0, 1], generator=seeded(2), output_type="np")) if kind == "sar" else \
        (lambda: pipe([0, 1], generator=seeded(2), output_type="np", **FAST))
    expected = call().images
    pipe.enable_model_cpu_offload(device="cpu")
    assert np.array_equal(call().images, expected)
    components = ("SpectralARForCausalLM", "SpectralTokenizer") if kind == "sar" else ("FARTransformer",
                                                                                      "AutoencoderKL")
    assert all(hook_calls[name] >= 1 for name in components), hook_calls  # sample() and decode() / the VAE
    hook_calls.clear()
    pipe.encode(torch.rand(1, 3, 32 if kind == "sar" else 16, 32 if kind == "sar" else 16))
    assert hook_calls[components[1]] >= 1 and hook_calls[components[0]] == 0


@pytest.mark.parametrize("kind", ["sar", "far"])
def test_sequential_offload_runs_every_method_through_the_hooks(kind):
    # enable_sequential_cpu_offload runs accelerate's cpu_offload(component, execution_device) on every component
    # (weights go to the meta device and are loaded only while their submodule runs). Called on CPU it asks for
    # execution device "cpu:0", which accelerate 1.16 cannot restore parameters onto (a plain-tensor TypeError for any
    # module), so this applies the same cpu_offload with device "cpu".
    pipe = tiny_sar() if kind == "sar" else tiny_far()
    size = 32 if kind == "sar" else 16
    images = torch.rand(2, 3, size, size, generator=seeded(1))
    call = (lambda: pipe([0, 1], generator=seeded(2), output_type="np")) if kind == "sar" else \
        (lambda: pipe([0, 1], generator=seeded(2), output_type="np", **FAST))
    expected_images, expected_encoded = call().images, pipe.encode(images)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)
    assert all(next(c.parameters()).device.type == "meta" for c in pipe.components.values()
               if isinstance(c, torch.nn.Module))
    assert np.array_equal(call().images, expected_images)
    assert torch.equal(pipe.encode(images), expected_encoded)


def test_interrupt_stops_spectralar_after_the_step_it_is_set():
    pipe = tiny_sar()
    steps = []

    def stop_at_three(pipeline, step, timestep, tensors):
        steps.append(step)
        if step == 2:
            pipeline._interrupt = True  # diffusers' convention

    output = pipe([0, 1], generator=seeded(4), output_type="np", callback_on_step_end=stop_at_three)
    assert steps == [0, 1, 2] and pipe.interrupt and output.codes.shape == (2, 3)
    truncated = pipe([0, 1], generator=seeded(4), output_type="np", num_tokens=3)  # the same first three steps
    assert not pipe.interrupt  # reset by the next call
    assert torch.equal(output.codes, truncated.codes) and np.array_equal(output.images, truncated.images)

    def stop_at_once(pipeline, step, timestep, tensors):
        pipeline.interrupt = True

    assert pipe([0], generator=seeded(4), callback_on_step_end=stop_at_once).codes.shape == (1, 1)
    assert pipe([0], generator=seeded(4)).codes.shape == (1, 16)


def test_interrupt_stops_far_and_decodes_that_steps_latent():
    pipe = tiny_far()
    seen = []

    def record(pipeline, step, timestep, tensors):
        seen.append(tensors["latents"].clone())

    settings = dict(num_inference_steps=3, diffusion_steps=3, output_type="np")
    pipe([0, 1], callback_on_step_end=record, generator=seeded(6), **settings)

    def stop_after_first(pipeline, step, timestep, tensors):
        pipeline.interrupt = True

    output = pipe([0, 1], callback_on_step_end=stop_after_first, return_intermediates=True, generator=seeded(6),
                  **settings)
    assert len(seen) == 3 and len(output.intermediates) == 1
    assert torch.equal(output.latents, seen[0])
    assert np.array_equal(output.images, pipe.image_processor.postprocess(pipe.decode_latents(seen[0]), "np"))


def test_far_text_mode_takes_num_images_per_prompt(text_dir):
    pipe = tiny_far(text_dir)
    embeds, mask = pipe.encode_prompt(["up", "a boot"])
    settings = dict(guidance_scale=2.0, output_type="latent", **FAST)
    repeated = pipe(prompt_embeds=embeds.repeat_interleave(2, 0), prompt_attention_mask=mask.repeat_interleave(2, 0),
                    generator=seeded(7), **settings).latents
    per_prompt = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_images_per_prompt=2, generator=seeded(7),
                      **settings).latents
    assert per_prompt.shape[0] == 4 and torch.equal(per_prompt, repeated)
    from_text = pipe(prompt=["up", "a boot"], num_images_per_prompt=2, generator=[seeded(i) for i in range(4)],
                     **settings).latents
    assert from_text.shape[0] == 4 and not torch.equal(from_text[0], from_text[1])  # each image its own noise
    with pytest.raises(ValueError, match="got 2 generators for 4 images"):
        pipe(prompt=["up", "a boot"], num_images_per_prompt=2, generator=[seeded(0), seeded(1)], **settings)
    with pytest.raises(ValueError, match="num_images_per_prompt=2 needs prompt or prompt_embeds"):
        tiny_far()([0], num_images_per_prompt=2, **FAST)


# ---------------------------------------------------------------------------------------------------------------
# model cards on every push path
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """HfApi's create_repo / upload_folder replaced by a local copy (no network): (root, uploads)."""
    import shutil

    root, uploads = tmp_path / "hub", []

    def create_repo(self, repo_id, **kwargs):
        (root / repo_id).mkdir(parents=True, exist_ok=True)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, root / repo_id, dirs_exist_ok=True)
        uploads.append(repo_id)
        return f"https://hub.local/{repo_id}/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return root, uploads


def card_data(path: Path) -> dict:
    text = path.read_text()
    return {**yaml.safe_load(text.split("---")[1]), "text": text}


def test_every_push_path_uploads_our_card(fake_hub, tmp_path, text_dir):
    root, uploads = fake_hub
    sar, far, far_text = tiny_sar(), tiny_far(), tiny_far(text_dir)
    assert sar.push_to_hub("me/sar").endswith("/commit/1")
    assert sar.save_pretrained(tmp_path / "sar-save", push_to_hub=True, repo_id="me/sar-save") is not None
    far.save_pretrained(tmp_path / "far-save", push_to_hub=True)  # repo id: the folder's name
    far_text.push_to_hub("me/far-text")
    sar.tokenizer.push_to_hub("me/tok")
    sar.tokenizer.save_pretrained(tmp_path / "tok-save", push_to_hub=True, repo_id="me/tok-save")
    sar.transformer.save_pretrained(tmp_path / "gen-save", push_to_hub=True, repo_id="me/gen-save")
    far.transformer.push_to_hub("me/far-transformer")
    MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny")).push_to_hub("me/vqgan")
    assert uploads == ["me/sar", "me/sar-save", "far-save", "me/far-text", "me/tok", "me/tok-save", "me/gen-save",
                       "me/far-transformer", "me/vqgan"]

    cards = {repo: card_data(root / repo / "README.md") for repo in uploads}
    for repo, card in cards.items():
        assert card["library_name"] == "spectralar_hf" and "spectralar_hf" in card["tags"], repo
        assert f"```bash\n{INSTALL_COMMAND}\n```" in card["text"], repo
    generators = ("me/sar", "me/sar-save", "far-save", "me/gen-save", "me/far-transformer")
    for repo in generators:
        assert "class-conditional" in cards[repo]["tags"], repo
        assert cards[repo]["pipeline_tag"] == "unconditional-image-generation", repo
    text_only = cards["me/far-text"]
    assert "class-conditional" not in text_only["tags"] and "text-to-image" in text_only["tags"]
    assert text_only["pipeline_tag"] == "text-to-image"
    for repo in ("me/tok", "me/tok-save", "me/vqgan"):  # tokenizers generate nothing
        assert "class-conditional" not in cards[repo]["tags"] and "image-generation" not in cards[repo]["tags"]
        assert "image-tokenizer" in cards[repo]["tags"], repo
    assert "far" in cards["far-save"]["tags"] and "dct" in cards["me/sar"]["tags"]

    # what was uploaded loads back through the generic folder layout
    assert (root / "me/sar-save" / "pipeline_spectralar.py").is_file()
    assert (root / "me/gen-save" / "modeling_spectralar.py").is_file()
    assert (tmp_path / "sar-save" / "README.md").read_text() == cards["me/sar-save"]["text"]
    with pytest.raises(TypeError, match=r"\['repo_id'\] only apply with push_to_hub=True"):
        sar.save_pretrained(tmp_path / "nowhere", repo_id="me/x")


def test_demo_cards_carry_the_install_line():
    for demo in (SAR_DEMO, FAR_DEMO):
        card = card_data(demo / "README.md")
        assert card["library_name"] == "spectralar_hf" and "class-conditional" in card["tags"]
        assert INSTALL_COMMAND in card["text"] and "trust_remote_code=True" in card["text"]


def test_training_scripts_take_a_hub_native_pipeline_folder_for_its_components():
    """`--tokenizer PIPELINE` / `--pretrained_model_name_or_path PIPELINE` read model_index.json's `_class_name` in
    its [module, class] form (what save_pretrained writes now, the shipped demos included)."""
    from spectralar_hf.training.arguments import resolve_model_dir

    demo = Path(__file__).resolve().parents[1] / "checkpoints" / "spectralar-fashion-mnist"
    assert isinstance(json.loads((demo / "model_index.json").read_text())["_class_name"], list)
    assert resolve_model_dir(demo, "--tokenizer", "SpectralTokenizer", model_type="spectral_tokenizer",
                             pipeline_class="SpectralARPipeline", subfolder="tokenizer") == demo / "tokenizer"
