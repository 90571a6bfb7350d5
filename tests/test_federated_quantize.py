"""Weight-only int8/int4 quantization of a frozen base through PyTorch's CPU kernels, with LoRA training on top."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from edgepool.errors import SpecError
from edgepool.federated.quantize import QuantizedLinear, quantize_frozen_linears
from edgepool.finetune.backbone import load_backbone


def relative_error(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def frozen_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).requires_grad_(False)


@pytest.mark.parametrize("bits, bound", [(8, 1e-2), (4, 0.1)])  # int4: 16 levels per group of 128 inputs
def test_output_close_to_float32_with_any_leading_dims(bits, bound):
    linear = frozen_mlp()[0]
    x = torch.randn(2, 3, 256)
    q = QuantizedLinear(linear, bits)
    y = q(x)
    assert y.shape == (2, 3, 512) and y.dtype == torch.float32
    assert relative_error(y, linear(x)) < bound


@pytest.mark.parametrize("bits, low, high", [(8, 3.9, 4.0), (4, 7.0, 8.0)])
def test_weight_bytes_shrink(bits, low, high):
    model = frozen_mlp()
    report = quantize_frozen_linears(model, bits)
    assert report.replaced == ["0", "2"] and not report.kept
    assert report.bytes_before == 2 * 256 * 512 * 4
    # int8: 1 byte per weight + a bf16 scale per row; int4: half a byte + a bf16 scale and zero per group of 128
    assert low < report.ratio < high
    assert all(isinstance(model[i], QuantizedLinear) for i in (0, 2))


def test_input_gradient_uses_the_dequantized_weight():
    for bits in (8, 4):
        q = QuantizedLinear(frozen_mlp()[2], bits)
        x = torch.randn(4, 512, requires_grad=True)
        grad_out = torch.randn(4, 256)
        q(x).backward(grad_out)
        assert torch.allclose(x.grad, grad_out @ q.dequantized_weight(), atol=1e-5)


def test_trainable_and_unshapely_layers_are_kept():
    model = frozen_mlp()
    model.append(nn.Linear(256, 2))  # trainable head: never quantized
    model.append(nn.Linear(2, 8).requires_grad_(False))  # frozen, but no int4 kernel shape
    report = quantize_frozen_linears(model, 4)
    assert report.replaced == ["0", "2"] and list(report.kept) == ["4"]
    assert isinstance(model[3], nn.Linear) and isinstance(model[4], nn.Linear)
    assert quantize_frozen_linears(frozen_mlp(), None).replaced == []


@pytest.mark.parametrize("bits", [8, 4])
def test_peft_lora_on_a_quantized_base_still_trains(bits):
    torch.manual_seed(0)
    bb = load_backbone("bert-tiny").freeze()
    model = get_peft_model(bb.model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    report = quantize_frozen_linears(model, bits, group_size=32)
    assert len(report.replaced) == 13 and not report.kept  # 6 linears in each of 2 blocks, and the pooler
    assert "base_model.model.encoder.layer.0.attention.self.query.base_layer" in report.replaced
    head = nn.Linear(32, 2)
    ids, labels = torch.randint(1000, 2000, (8, 12)), torch.tensor([0, 1] * 4)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.SGD(lora + list(head.parameters()), lr=0.1)

    def loss():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return nn.functional.cross_entropy(head(hidden.mean(1)), labels)

    first = loss()
    first.backward()
    assert all(p.grad.abs().sum() > 0 for p in lora if p.shape[0] == 32)  # lora_B (A's grads wait for B != 0)
    for _ in range(5):
        opt.step()
        opt.zero_grad()
        loss().backward()
    assert all(p.grad.abs().sum() > 0 for p in lora)
    assert loss().item() < first.item()


def test_bad_bits_and_group_size():
    for bits in (3, 16, 0):
        with pytest.raises(SpecError, match="bits"):
            quantize_frozen_linears(frozen_mlp(), bits)
    with pytest.raises(SpecError, match="group_size"):
        quantize_frozen_linears(frozen_mlp(), 4, group_size=48)
    with pytest.raises(SpecError, match="group_size"):
        QuantizedLinear(nn.Linear(64, 10), 4, group_size=32)  # out not a multiple of 16
