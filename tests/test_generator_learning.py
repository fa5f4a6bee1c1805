"""Real learning: a tiny generator memorises one code sequence per class and reproduces it greedily."""

import pytest
import torch

from spectralar_hf import SpectralARConfig, SpectralARForCausalLM
from spectralar_hf.training.optim import decay_parameter_groups


@pytest.mark.parametrize("tokens_per_step", [1, 4])
def test_reproduces_each_class_sequence(tokens_per_step):
    torch.manual_seed(0)
    config = SpectralARConfig.from_preset("tiny", tokens_per_step=tokens_per_step, class_dropout_prob=0.1)
    model = SpectralARForCausalLM(config)
    targets = torch.randint(0, config.vocab_size, (config.num_classes, config.num_image_tokens),
                            generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(decay_parameter_groups(model, 0.05), lr=3e-3, betas=(0.9, 0.95))
    model.train()
    for _ in range(300):
        labels = torch.randint(0, config.num_classes, (32,))
        loss = model(input_ids=targets[labels], class_labels=labels, labels=targets[labels], use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
    model.eval()
    classes = torch.arange(config.num_classes)
    samples = model.sample(classes, top_k=1)
    assert torch.equal(samples, targets), (samples != targets).float().mean()
    # guidance keeps the memorised sequences (they are the conditional modes)
    assert torch.equal(model.sample(classes, top_k=1, guidance_scale=2.0), targets)
