"""CodebookRestarter: dead codes move onto encoder latents, deterministically, and live codes stay."""

import torch

from spectralar_hf.training.vq import CodebookRestarter


def test_dead_codes_are_restarted_on_latents_and_live_ones_kept():
    torch.manual_seed(0)
    codebook = torch.nn.Embedding(8, 4)
    before = codebook.weight.detach().clone()
    restarter = CodebookRestarter(8, decay=0.5, dead_fraction=0.5, seed=1)
    latents = torch.randn(2, 3, 4)
    codes = torch.tensor([[0, 1, 0], [1, 0, 1]])  # only codes 0 and 1 are used
    restarted = 0
    for _ in range(5):
        restarted += restarter.step(codebook, codes, latents)
    assert restarted >= 6
    assert torch.equal(codebook.weight[:2], before[:2])  # live codes untouched
    normalized = torch.nn.functional.normalize(latents.reshape(-1, 4), dim=-1)
    for row in codebook.weight[2:]:
        assert torch.isclose(normalized, row.unsqueeze(0)).all(dim=1).any()  # each restarted row is a latent


def test_restarts_are_reproducible_from_state():
    latents = torch.randn(4, 5, 3)
    codes = torch.zeros(4, 5, dtype=torch.long)
    first, second = torch.nn.Embedding(16, 3), torch.nn.Embedding(16, 3)
    second.load_state_dict(first.state_dict())
    a, b = CodebookRestarter(16, seed=3), CodebookRestarter(16, seed=3)
    a.step(first, codes, latents)
    b.load_state_dict(a.state_dict())
    b_codebook = torch.nn.Embedding(16, 3)
    b_codebook.load_state_dict(first.state_dict())
    a.step(first, codes, latents)
    b.step(b_codebook, codes, latents)
    assert torch.equal(first.weight, b_codebook.weight)
