"""`pytest --perturb-floats` (tests/float_perturbation.py) rounds like another CPU: 1 ulp on some elements of every
float32 matrix product, deterministic for the same computation, other for another shape, gradients unchanged; and it
flags a test that pins a float recorded on this machine."""

import subprocess
import sys
from pathlib import Path

import torch
from float_perturbation import FloatPerturbation, perturb


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_one_ulp_on_a_quarter_of_the_elements_deterministically():
    a, b = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)), torch.randn(96, 80)
    plain = a @ b
    with FloatPerturbation():
        once, again = a @ b, torch.matmul(a, b)
        linear = torch.nn.functional.linear(a, b.T)
    assert torch.equal(once, again)  # the same computation rounds the same way
    assert ulps(once, plain).max() == 1 and 0.15 < (once != plain).float().mean() < 0.35
    assert ulps(linear, torch.nn.functional.linear(a, b.T)).max() == 1
    assert not torch.equal(perturb(plain), perturb(plain.reshape(80, 64)).reshape(64, 80))  # another shape


def test_integers_other_dtypes_and_gradients_pass_through():
    codes = torch.arange(6).reshape(2, 3)
    assert perturb(codes) is codes
    assert perturb(torch.ones(3, dtype=torch.float64)).equal(torch.ones(3, dtype=torch.float64))
    x = torch.randn(3, 5, requires_grad=True)
    weight = torch.randn(4, 5)
    with FloatPerturbation():
        torch.nn.functional.linear(x, weight).sum().backward()
    torch.testing.assert_close(x.grad, weight.sum(0).expand(3, 5))


def test_the_flag_flags_a_test_that_pins_a_float_recorded_here(tmp_path):
    a, b = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(8, 8)
    recorded = (a @ b).tolist()
    (tmp_path / "test_pinned.py").write_text(
        "import torch\n"
        f"A, B, RECORDED = torch.tensor({a.tolist()}), torch.tensor({b.tolist()}), torch.tensor({recorded})\n"
        "def test_pinned():\n"
        "    assert torch.equal(A @ B, RECORDED)\n"
        "def test_tolerant():\n"
        "    torch.testing.assert_close(A @ B, RECORDED)\n")
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    (tmp_path / "float_perturbation.py").write_text(Path(__file__).with_name("float_perturbation.py").read_text())

    def pytest(*flags) -> str:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags, str(tmp_path)],
                                capture_output=True, text=True, cwd=tmp_path)
        return result.stdout

    assert "2 passed" in pytest()
    perturbed = pytest("--perturb-floats")
    assert "1 failed, 1 passed" in perturbed and "test_pinned.py::test_pinned" in perturbed
