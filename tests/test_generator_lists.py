"""Lists of `torch.Generator`s, one per image (diffusers' convention): image `b`'s random numbers come from generator
`b` alone, so the images do not depend on the batch they are sampled in (split, permuted, alone), for
SpectralARForCausalLM.sample, SpectralARPipeline (and super_resolve), FARTransformer.sample and FARPipeline. A list of
one generator equals that generator; a single generator still samples exactly what it did before lists existed; CFG's
unconditional rows draw nothing; bad lists are clear errors.

Codes are compared exactly. Latents and images only up to float rounding (`closely`, relative to the tensor's scale):
a batch of another size, or another CPU, can run its GEMMs with another blocking / kernel (and so round differently),
so batched floats are not promised bit for bit; the codes derived from them agree unless a draw falls within rounding
of a CDF boundary (it does not here, also under `pytest --perturb-floats`).

Tiny random components (tests/test_generator.py's, test_pipeline.py's and test_far.py's), one CPU thread.
"""

import pytest
import torch
from conftest import assert_rounding_close
from test_compiled_sampling import AOT_EAGER
from test_far import spread, tiny_config, tiny_vae
from test_generator import tiny
from test_pipeline import make_pipeline

from spectralar_hf import FARPipeline, FARTransformer, build_noise_scheduler
from spectralar_hf.utils import check_generator, rand_rows

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = [11, 12, 13, 14]
PERMUTATION = [2, 0, 3, 1]
# Floats of batches of different sizes (or recorded on another CPU) are equal up to float32 rounding, relative to the
# tensor's scale (conftest.assert_rounding_close: a latent near 0 carries the absolute error of its neighbours of
# size 400). Under --perturb-floats the tiny FAR samples below move by at most 5e-7 of max|x|; another Intel CPU gave
# 2.3e-7; the tolerance is 1e-5 of max|x|.


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_batch_invariance(run, labels: list, seeds: list, compare) -> torch.Tensor:
    """`run(labels, generators)` for the whole batch equals, row by row, two half batches and the permuted batch."""
    full = run(labels, generators(seeds))
    halves = torch.cat([run(labels[:2], generators(seeds[:2])), run(labels[2:], generators(seeds[2:]))])
    compare(halves, full)
    permuted = run([labels[i] for i in PERMUTATION], generators([seeds[i] for i in PERMUTATION]))
    compare(permuted, full[PERMUTATION])
    return full


def exactly(actual, expected):
    assert torch.equal(actual, expected), (actual, expected)


def closely(actual, expected):
    assert_rounding_close(actual, expected)


# ---------------------------------------------------------------------------------------------------------------
# Single-generator outputs recorded on the code before generator lists existed (same tiny models and seeds)
# ---------------------------------------------------------------------------------------------------------------

SAR_PLAIN = [[145, 19, 121, 157, 5, 152, 38, 230, 131, 7, 70, 80, 70, 183, 153, 44],
             [191, 83, 230, 96, 35, 179, 80, 105, 156, 27, 230, 32, 233, 144, 12, 210],
             [21, 174, 113, 116, 83, 191, 182, 220, 241, 101, 65, 11, 183, 74, 31, 187]]
SAR_CFG_P4 = [[157, 46, 122, 157, 225, 15, 83, 145, 122, 180, 186, 207, 246, 163, 241, 87],
              [7, 183, 55, 183, 128, 22, 196, 196, 7, 166, 153, 249, 254, 15, 163, 123],
              [157, 157, 180, 179, 18, 110, 163, 70, 190, 7, 7, 7, 81, 191, 57, 174]]
FAR_LATENTS = [
    88.206825, 18.918678, -123.231827, -65.679947, 134.453995, -39.422138, 0.403455, -211.917603, 16.897392,
    114.505951, -4.296172, -135.325378, -11.771482, 158.80336, 23.597498, -29.728428, 21.292242, -35.613598,
    -114.436775, -59.685688, 96.374886, -54.694122, -156.226227, -301.838684, 8.059999, 46.629131, 383.689911,
    -125.211327, -63.993034, 247.87561, -28.475639, 118.776909, -170.376389, 61.613396, -48.387836, 4.053312,
    -18.636415, -69.523514, 35.123722, -108.799423, 180.09491, -69.360481, 146.181503, -75.459778, 85.687302,
    -98.472824, -23.262333, -116.582268, -183.318298, 49.844685, -100.092987, -60.863998, -42.934422, -87.208519,
    -1.075401, -184.97229, 147.237915, -78.762489, 117.16394, -58.77219, 30.458908, -195.167328, 210.990509,
    -131.021484,
]


def far_model() -> FARTransformer:
    return spread(FARTransformer(tiny_config(beta_schedule="linear"))).eval()


FAR_SETTINGS = dict(guidance_scale=2.0, mask_schedule="cosine", diffusion_steps=3)


def test_a_single_generator_samples_what_it_sampled_before_lists():
    exactly(tiny().sample([1, 5, 9], generator=seeded(0)), torch.tensor(SAR_PLAIN))
    exactly(tiny(tokens_per_step=4).sample([1, 5, 9], guidance_scale=2.0, temperature=0.9, top_k=50, top_p=0.9,
                                           generator=seeded(1)), torch.tensor(SAR_CFG_P4))
    latents = far_model().sample([0, 3], generator=seeded(2), **FAR_SETTINGS)
    # recorded to 6 decimals on one CPU: another rounds the tiny model's floats differently
    closely(latents.flatten(), torch.tensor(FAR_LATENTS))


# ---------------------------------------------------------------------------------------------------------------
# rand_rows / check_generator
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rand", "randn", "randint"])
def test_rand_rows_draws_row_b_from_generator_b(kind):
    high = 100 if kind == "randint" else None
    shape = (3, 5, 7)
    rows = rand_rows(shape, generators(SEEDS[:3]), "cpu", kind, high=high)
    assert rows.shape == shape
    for row, seed in enumerate(SEEDS[:3]):
        exactly(rows[row : row + 1], rand_rows((1, 5, 7), seeded(seed), "cpu", kind, high=high))
    # a list of one is the generator itself; so is the same generator repeated (its rows draw together)
    exactly(rand_rows((1, 5, 7), [seeded(3)], "cpu", kind, high=high),
            rand_rows((1, 5, 7), seeded(3), "cpu", kind, high=high))
    shared = seeded(4)
    exactly(rand_rows(shape, [shared] * 3, "cpu", kind, high=high), rand_rows(shape, seeded(4), "cpu", kind, high=high))


def test_check_generator_rules():
    check_generator(None, 2)
    check_generator(seeded(0), 2)
    check_generator(generators(SEEDS[:2]), 2)
    check_generator(tuple(generators(SEEDS[:2])), 2)
    with pytest.raises(ValueError, match=r"got 3 generators for 4 images; pass one per image or a single generator"):
        check_generator(generators(SEEDS[:3]), 4)
    with pytest.raises(ValueError, match=r"got an empty list of generators for 2 images; pass one per image"):
        check_generator([], 2)
    with pytest.raises(TypeError, match=r"generator\[1\] must be a torch.Generator, got int 5; pass one "
                                        r"torch.Generator per image"):
        check_generator([seeded(0), 5], 2)
    with pytest.raises(TypeError, match=r"must be a torch.Generator \(or None\), got int 3"):
        check_generator(3, 2)
    with pytest.raises(TypeError, match=r"one torch.Generator \(or None\) in a training step, got a list of 2; "
                                        r"per-image generator lists are for sampling"):
        check_generator(generators(SEEDS[:2]))  # no image count: a training step


# ---------------------------------------------------------------------------------------------------------------
# SpectralARForCausalLM.sample
# ---------------------------------------------------------------------------------------------------------------


SAR_CASES = {
    "plain": (1, dict()),
    "cfg-filters": (1, dict(guidance_scale=2.5, top_k=50, top_p=0.9, temperature=1.3)),
    "p4-cfg-linear-filters": (4, dict(guidance_scale=2.0, guidance_schedule="linear", top_k=20, top_p=0.95,
                                      temperature=0.8)),
}


@pytest.mark.parametrize("case", list(SAR_CASES))
def test_spectralar_sample_rows_depend_only_on_their_generator(case):
    tokens_per_step, settings = SAR_CASES[case]
    model = tiny(tokens_per_step=tokens_per_step)
    labels = [1, 5, 1, 9]  # rows 0 and 2: same class, other generators
    run = lambda labels, gens: model.sample(labels, generator=gens, **settings)  # noqa: E731
    full = check_batch_invariance(run, labels, SEEDS, exactly)
    assert not torch.equal(full[0], full[2])  # the generator, not the class alone, decides
    for row in range(4):  # each image alone, with its generator as a list of one and by itself
        exactly(run([labels[row]], [seeded(SEEDS[row])])[0], full[row])
        exactly(model.sample([labels[row]], generator=seeded(SEEDS[row]), **settings)[0], full[row])


def test_spectralar_list_of_one_generator_is_that_generator():
    model = tiny(tokens_per_step=4)
    settings = dict(guidance_scale=2.0, top_k=50, temperature=1.2)
    exactly(model.sample([3], generator=[seeded(5)], **settings), model.sample([3], generator=seeded(5), **settings))
    exactly(model.sample([3, 4], generator=[seeded(5)] * 2), model.sample([3, 4], generator=seeded(5)))


def test_spectralar_cfg_draws_nothing_for_the_unconditional_rows():
    model = tiny(tokens_per_step=4)
    plain, guided = generators(SEEDS[:2]), generators(SEEDS[:2])
    model.sample([1, 5], generator=plain)
    model.sample([1, 5], generator=guided, guidance_scale=3.0)
    for one, other in zip(plain, guided):
        exactly(one.get_state(), other.get_state())  # the same number of draws per generator


def test_spectralar_lists_with_prefix_truncation_and_compiled_sampling():
    model = tiny(tokens_per_step=4)
    prefix = torch.randint(0, 256, (4, 8), generator=seeded(0))
    settings = dict(num_tokens=12, guidance_scale=2.0, top_k=30)
    full = model.sample([1, 5, 1, 9], prefix_codes=prefix, generator=generators(SEEDS), **settings)
    assert full.shape == (4, 12) and torch.equal(full[:, :8], prefix)
    halves = torch.cat([model.sample([1, 5], prefix_codes=prefix[:2], generator=generators(SEEDS[:2]), **settings),
                        model.sample([1, 9], prefix_codes=prefix[2:], generator=generators(SEEDS[2:]), **settings)])
    exactly(halves, full)
    torch._dynamo.reset()
    try:
        compiled = model.sample([1, 5, 1, 9], prefix_codes=prefix, generator=generators(SEEDS),
                                compile_config=AOT_EAGER, **settings)
    finally:
        torch._dynamo.reset()
    exactly(compiled, full)
    torch._dynamo.reset()
    try:  # every step compiled (no prefix prefill)
        compiled = model.sample([1, 5, 1, 9], generator=generators(SEEDS), compile_config=AOT_EAGER, top_k=30)
    finally:
        torch._dynamo.reset()
    exactly(compiled, model.sample([1, 5, 1, 9], generator=generators(SEEDS), top_k=30))


def test_spectralar_sample_rejects_bad_generator_lists():
    model = tiny()
    with pytest.raises(ValueError, match=r"got 3 generators for 4 images; pass one per image or a single generator"):
        model.sample([1, 2, 3, 4], generator=generators(SEEDS[:3]))
    with pytest.raises(ValueError, match=r"got an empty list of generators for 2 images"):
        model.sample([1, 2], generator=[])
    with pytest.raises(TypeError, match=r"generator\[0\] must be a torch.Generator, got int 0"):
        model.sample([1, 2], generator=[0, seeded(1)])


# ---------------------------------------------------------------------------------------------------------------
# SpectralARPipeline
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sar_pipe():
    return make_pipeline()


def test_spectralar_pipeline_images_depend_only_on_their_generator(sar_pipe):
    settings = dict(guidance_scale=2.0, top_k=40, output_type="pt")
    outputs = {}

    def run(labels, gens):
        output = sar_pipe(labels, generator=gens, **settings)
        outputs[len(outputs)] = output.images
        return output.codes

    codes = check_batch_invariance(run, ["Bag", 3, "Bag", 7], SEEDS, exactly)
    full, first, second, permuted = outputs.values()
    closely(torch.cat([first, second]), full)
    closely(permuted, full[PERMUTATION])
    one = sar_pipe(["Bag"], generator=[seeded(SEEDS[0])], **settings)
    exactly(one.codes, codes[:1])
    exactly(one.codes, sar_pipe(["Bag"], generator=seeded(SEEDS[0]), **settings).codes)


def test_super_resolve_images_depend_only_on_their_generator(sar_pipe):
    images = torch.rand(2, 3, 32, 32, generator=seeded(0))
    settings = dict(scale=2, class_labels=["Bag", 3], keep_tokens=4, output_type="pt")
    both = sar_pipe.super_resolve(images, generator=generators(SEEDS[:2]), **settings)
    assert both.codes.shape == (8, 16)  # 2 images x 4 sub-images
    for index in range(2):
        alone = dict(settings, class_labels=settings["class_labels"][index])
        single = sar_pipe.super_resolve(images[index : index + 1], generator=seeded(SEEDS[index]), **alone)
        listed = sar_pipe.super_resolve(images[index : index + 1], generator=[seeded(SEEDS[index])], **alone)
        exactly(listed.codes, single.codes)  # a list of one is the generator itself
        exactly(both.codes[4 * index : 4 * index + 4], single.codes)
        closely(both.images[index : index + 1], single.images)
    with pytest.raises(ValueError, match=r"got 4 generators for 2 images"):  # images, not sub-images
        sar_pipe.super_resolve(images, generator=generators(SEEDS), **settings)


def test_spectralar_pipeline_rejects_bad_generator_lists(sar_pipe):
    with pytest.raises(ValueError, match=r"got 1 generator for 2 images; pass one per image or a single generator"):
        sar_pipe([1, 2], generator=[seeded(0)])
    with pytest.raises(ValueError, match=r"got an empty list of generators for 1 image;"):
        sar_pipe("Bag", generator=[])
    with pytest.raises(TypeError, match=r"generator\[1\] must be a torch.Generator, got str 'seed'"):
        sar_pipe([1, 2], generator=[seeded(0), "seed"])


# ---------------------------------------------------------------------------------------------------------------
# FARTransformer.sample and FARPipeline
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def far():
    return far_model()


@pytest.mark.parametrize("settings", [dict(FAR_SETTINGS), dict(guidance_scale=3.0, guidance_schedule="linear",
                                                               temperature=(0.8, 1.0), diffusion_steps=2)],
                         ids=["cfg-cosine-mask", "cfg-linear-temperature-ramp"])
def test_far_sample_rows_depend_only_on_their_generator(far, settings):
    run = lambda labels, gens: far.sample(labels, generator=gens, **settings)  # noqa: E731
    full = check_batch_invariance(run, [0, 3, 0, 4], SEEDS, closely)
    assert not torch.allclose(full[0], full[2])  # the generator, not the class alone, decides
    for row in range(4):
        closely(run([[0, 3, 0, 4][row]], [seeded(SEEDS[row])])[0], full[row])


def test_far_list_of_one_generator_is_that_generator(far):
    exactly(far.sample([2], generator=[seeded(5)], **FAR_SETTINGS), far.sample([2], generator=seeded(5),
                                                                                **FAR_SETTINGS))
    exactly(far.sample([2, 1], generator=[seeded(5)] * 2, **FAR_SETTINGS),
            far.sample([2, 1], generator=seeded(5), **FAR_SETTINGS))


def test_far_cfg_draws_nothing_for_the_unconditional_rows(far):
    plain, guided = generators(SEEDS[:2]), generators(SEEDS[:2])
    far.sample([1, 2], generator=plain, mask_schedule="cosine", diffusion_steps=3, guidance_scale=1.0)
    far.sample([1, 2], generator=guided, mask_schedule="cosine", diffusion_steps=3, guidance_scale=3.0)
    for one, other in zip(plain, guided):
        exactly(one.get_state(), other.get_state())


def test_far_training_forward_takes_one_generator(far):
    latents = torch.randn(2, 2, 4, 4, generator=seeded(0))
    assert torch.isfinite(far(latents, [0, 1], generator=seeded(1)).loss)
    with pytest.raises(TypeError, match=r"one torch.Generator \(or None\) in a training step, got a list of 2; "
                                        r"per-image generator lists are for sampling"):
        far(latents, [0, 1], generator=generators(SEEDS[:2]))


def test_far_sample_rejects_bad_generator_lists(far):
    with pytest.raises(ValueError, match=r"got 3 generators for 4 images; pass one per image or a single generator"):
        far.sample([0, 1, 2, 3], generator=generators(SEEDS[:3]), diffusion_steps=1)
    with pytest.raises(ValueError, match=r"got an empty list of generators for 1 image"):
        far.sample([0], generator=(), diffusion_steps=1)
    with pytest.raises(TypeError, match=r"generator\[0\] must be a torch.Generator, got NoneType"):
        far.sample([0], generator=[None], diffusion_steps=1)


@pytest.fixture(scope="module")
def far_pipe(far):
    pipe = FARPipeline(vae=tiny_vae(), transformer=far, scheduler=build_noise_scheduler(far.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_far_pipeline_images_depend_only_on_their_generator(far_pipe):
    settings = dict(guidance_scale=2.0, mask_schedule="cosine", num_inference_steps=2, diffusion_steps=3,
                    output_type="pt")
    images = {}

    def run(labels, gens):
        output = far_pipe(labels, generator=gens, **settings)
        images[len(images)] = output.images
        return output.latents

    latents = check_batch_invariance(run, [0, 3, 0, 4], SEEDS, closely)
    full, first, second, permuted = images.values()
    closely(torch.cat([first, second]), full)
    closely(permuted, full[PERMUTATION])
    exactly(far_pipe([0], generator=[seeded(SEEDS[0])], **settings).latents,
            far_pipe([0], generator=seeded(SEEDS[0]), **settings).latents)
    closely(far_pipe([0], generator=[seeded(SEEDS[0])], **settings).latents, latents[:1])
    with pytest.raises(ValueError, match=r"got 2 generators for 4 images; pass one per image or a single generator"):
        far_pipe([0, 3, 0, 4], generator=generators(SEEDS[:2]), **settings)
    with pytest.raises(TypeError, match=r"generator\[1\] must be a torch.Generator"):
        far_pipe([0, 3], generator=[seeded(0), 1], **settings)
