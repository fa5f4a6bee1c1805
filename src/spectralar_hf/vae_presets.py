"""Configurations of the diffusers `AutoencoderKL` that FAR generates latents of (the continuous tokenizer).

`VAE_PRESETS[name]` are `AutoencoderKL(**config)` keyword arguments. `examples/train_vae.py` trains them (`--preset`)
and `conversion/convert_mar_vae.py` loads MAR's released `kl16.ckpt` into the `"kl-16"` one, so the architecture is
written down here once.

`"kl-16"` is MAR's KL-16 (LTH14/mar `models/vae.py`, `AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))`, itself
LDM's KL autoencoder) exactly, 66,456,019 parameters in 312 tensors:

* encoder: a 3x3 `conv_in` to 128 channels, then 5 stages of 2 residual blocks with 128, 128, 256, 256, 512 output
  channels; each stage but the last ends in a stride-2 3x3 convolution after a (0, 1, 0, 1) zero pad (diffusers'
  `Downsample2D` with `padding=0`, which the VAE encoder uses). MAR's encoder has `attn_resolutions=(16,)` at
  `resolution=256`: the last stage (16 x 16 feature maps) follows each residual block with a single-head
  self-attention block, hence `AttnDownEncoderBlock2D` there;
* a mid block (residual, single-head self-attention, residual) in the encoder and in the decoder;
* GroupNorm with 32 groups and eps 1e-6 everywhere, SiLU;
* `double_z`: the encoder outputs mean and log-variance (2 x 16 channels); `quant_conv` (1x1, 32 -> 32) and
  `post_quant_conv` (1x1, 16 -> 16) are both present;
* decoder: 5 stages of 3 residual blocks (512, 256, 256, 128, 128 channels, coarse to fine), nearest-neighbour x2
  upsampling followed by a 3x3 convolution between them, no attention outside the mid block (`attn_resolutions=()`);
* 256 x 256 RGB images in [-1, 1] -> 16 x 16 x 16 latents (downsampling 2 ** (stages - 1) = 16).

Its `scaling_factor` 0.2325 is MAR's constant (`engine_mar.py`: `posterior.sample().mul_(0.2325)` to train,
`vae.decode(tokens / 0.2325)` to sample), which FAR uses too. A VAE trained by `train_vae.py` measures its own factor
after training (1 / std of its latents) unless `--scaling_factor` is given.

The other presets are KL-16 scaled down for small images (no down-stage attention); `checkpoints/far-fashion-mnist`
ships a `fmnist-f4` VAE, so their values must stay as they are.
"""

from __future__ import annotations

from typing import Any

MAR_KL16_SCALING_FACTOR = 0.2325  # 1 / std of KL-16's latents (MAR's engine_mar.py; FAR's too)
MAR_KL16_STAGES = 5  # ch_mult (1, 1, 2, 2, 4) of channel width 128

VAE_PRESETS: dict[str, dict[str, Any]] = {
    # MAR's KL-16, key for key (see the module docstring). force_upcast keeps diffusers' default (True): pipelines run
    # a float16 copy of this VAE in float32, as LDM-style VAEs can overflow in float16.
    "kl-16": dict(in_channels=3, out_channels=3, sample_size=256, block_out_channels=[128, 128, 256, 256, 512],
                  down_block_types=["DownEncoderBlock2D"] * (MAR_KL16_STAGES - 1) + ["AttnDownEncoderBlock2D"],
                  up_block_types=["UpDecoderBlock2D"] * MAR_KL16_STAGES, layers_per_block=2, latent_channels=16,
                  norm_num_groups=32, act_fn="silu", mid_block_add_attention=True, use_quant_conv=True,
                  use_post_quant_conv=True, scaling_factor=MAR_KL16_SCALING_FACTOR, force_upcast=True),
    "fmnist-f4": dict(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[32, 64, 128],
                      layers_per_block=1, latent_channels=4, norm_num_groups=32),
    "fmnist-f8": dict(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[32, 64, 128, 128],
                      layers_per_block=1, latent_channels=8, norm_num_groups=32),
    "tiny": dict(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[8, 8, 8], layers_per_block=1,
                 latent_channels=4, norm_num_groups=4),
}
