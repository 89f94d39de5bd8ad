"""shardcast.load_into in a job of one, as nn.Module.load_state_dict users expect it: strict and non-strict key
reports, assign onto a model built under init_empty_weights, tied weights, buffers, requires_grad."""

import pytest
import torch
from torch import nn

import reference
import shardcast
from tiny_model import Tiny


def assert_holds_checkpoint(model, tensors):
    sd = model.state_dict()
    for name, want in tensors.items():
        assert reference.bit_equal(sd[name], want), name


def test_init_empty_weights_puts_parameters_on_meta_and_keeps_buffers():
    with shardcast.init_empty_weights():
        model = Tiny()
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    assert model.lm_head.weight is model.embed.weight
    with shardcast.init_empty_weights(include_buffers=True):
        assert all(b.is_meta for b in Tiny().buffers())
    assert not any(p.is_meta for p in Tiny().parameters()), "init_empty_weights leaked past its block"


@pytest.mark.parametrize("placement", ["shared", "cow", "private"])
def test_assign_onto_a_meta_model_loads_every_key_and_keeps_ties(placement, safetensors_ckpt, tensors):
    with shardcast.init_empty_weights():
        model = Tiny()
    model.layers[0].norm.weight.requires_grad_(False)
    result = shardcast.load_into(model, safetensors_ckpt, placement=placement, assign=True)
    assert (result.missing_keys, result.unexpected_keys, result.mismatched_keys) == ([], [], [])
    assert result.loaded == len(tensors)
    assert not any(t.is_meta for t in model.state_dict().values())
    assert_holds_checkpoint(model, tensors)
    assert model.lm_head.weight is model.embed.weight, "tied weights came apart"
    assert isinstance(model.embed.weight, nn.Parameter) and model.embed.weight.requires_grad
    assert not model.layers[0].norm.weight.requires_grad
    assert torch.equal(model.rotary, torch.arange(4.0)), "a non-persistent buffer was touched"
    assert model.layers[0].attn.weight.dtype == torch.bfloat16  # dtype "keep": the checkpoint's


def test_assign_with_dtype_converts_floats(safetensors_ckpt, tensors):
    with shardcast.init_empty_weights():
        model = Tiny()
    shardcast.load_into(model, safetensors_ckpt, assign=True, dtype=torch.float32)
    assert model.layers[1].attn.bias.dtype == torch.float32
    assert torch.equal(model.layers[1].attn.bias, tensors["layers.1.attn.bias"].float())
    assert model.position_ids.dtype == torch.int64


@pytest.mark.parametrize("placement", ["shared", "cow", "private"])
def test_without_assign_the_modules_tensors_keep_their_identity(placement, bin_ckpt, tensors):
    model = Tiny()
    before = {name: id(p) for name, p in model.named_parameters()}
    result = shardcast.load_into(model, bin_ckpt, placement=placement)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert {name: id(p) for name, p in model.named_parameters()} == before
    assert_holds_checkpoint(model, tensors)
    assert model.lm_head.weight is model.embed.weight


def test_a_meta_model_without_assign_is_refused_naming_the_key(safetensors_ckpt):
    with shardcast.init_empty_weights():
        model = Tiny()
    with pytest.raises(ValueError, match="meta.*assign"):
        shardcast.load_into(model, safetensors_ckpt)


class Extra(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.head2 = nn.Linear(16, 2)
        self.layers[1].attn = nn.Linear(16, 40)  # a shape the checkpoint does not have


def test_strict_lists_every_problem_and_loads_nothing(safetensors_ckpt):
    model = Extra()
    before = model.embed.weight.detach().clone()
    with pytest.raises(ValueError) as error:
        shardcast.load_into(model, safetensors_ckpt, strict=True)
    text = str(error.value)
    assert "head2.weight" in text and "head2.bias" in text and "layers.1.attn.weight" in text
    assert torch.equal(model.embed.weight, before), "strict failure loaded something"


def test_non_strict_reports_missing_unexpected_and_mismatched_keys(safetensors_ckpt, tensors):
    model = Extra()
    del model.codes  # in the checkpoint, not in the module: unexpected
    result = shardcast.load_into(model, safetensors_ckpt, strict=False, placement="private")
    assert sorted(result.missing_keys) == ["head2.bias", "head2.weight"]
    assert result.unexpected_keys == ["codes"]
    assert len(result.mismatched_keys) == 2
    assert all(k.startswith("layers.1.attn.") for k in result.mismatched_keys)
    assert torch.equal(model.embed.weight, tensors["embed.weight"])


def test_a_cow_model_trains_and_the_checkpoint_stays_as_it_was(safetensors_ckpt, tensors):
    with shardcast.init_empty_weights():
        model = Tiny()
    shardcast.load_into(model, safetensors_ckpt, assign=True, placement="cow", dtype=torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    logits = model.lm_head(model.embed(torch.tensor([1, 2, 3])))
    nn.functional.cross_entropy(logits, torch.tensor([3, 2, 1])).backward()
    optimizer.step()
    assert not torch.equal(model.embed.weight, tensors["embed.weight"])
    again = shardcast.load(safetensors_ckpt, placement="shared")
    assert torch.equal(again["embed.weight"], tensors["embed.weight"])
