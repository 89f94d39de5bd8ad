"""device_map, max_memory, offload_folder and dtype as transformers' and accelerate's users write them, in a job of
one: the planned map read back as hf_device_map, tied weights and no-split modules on one device, disk tensors
mapped from the files, conversions written to the offload folder and removed."""

import os

import pytest
import torch

import reference
import shardcast
from tiny_model import Tiny


def test_auto_plans_over_the_model_keeping_no_split_classes_whole(safetensors_ckpt, tensors):
    # embed 4096 B, each Block 1760 B (attn 1632 + norm 128): a cpu budget of 7488 B fits embed, layer 0 and one attn.
    budget = {"cpu": 4096 + 1760 + 1632}
    with shardcast.init_empty_weights():
        model = Tiny()
    result = shardcast.load_into(model, safetensors_ckpt, assign=True, device_map="sequential", max_memory=budget,
                                 no_split_module_classes=["Block"])
    assert result.device_map == {"embed": "cpu", "layers.0": "cpu", "layers.1": "disk", "position_ids": "disk",
                                 "mask": "disk", "codes": "disk"}
    assert model.hf_device_map == result.device_map
    assert model.lm_head.weight is model.embed.weight, "tied weights came apart"
    sd = model.state_dict()
    for name, want in tensors.items():
        assert reference.bit_equal(sd[name], want), name

    with shardcast.init_empty_weights():
        model = Tiny()
    split = shardcast.load_into(model, safetensors_ckpt, assign=True, device_map="sequential", max_memory=budget)
    assert split.device_map["layers.1.attn"] == "cpu" and split.device_map["layers.1.norm"] == "disk"


def test_an_explicit_map_that_splits_tied_weights_keeps_them_together(tmp_path, tensors):
    shardcast.save_sharded({**tensors, "lm_head.weight": tensors["embed.weight"].clone()}, tmp_path / "ckpt")
    with shardcast.init_empty_weights():
        model = Tiny()
    result = shardcast.load_into(model, tmp_path / "ckpt", assign=True, device_map={"lm_head": "disk", "": "cpu"})
    assert result.device_map["lm_head.weight"] == "cpu", result.device_map  # where embed.weight, its holder, went
    assert model.lm_head.weight is model.embed.weight
    assert reference.bit_equal(model.embed.weight, tensors["embed.weight"])


def test_disk_tensors_in_another_dtype_go_through_the_offload_folder(tmp_path, safetensors_ckpt, tensors):
    offload = tmp_path / "offload"
    sd = shardcast.load(safetensors_ckpt, device_map={"layers": "disk", "": "cpu"}, dtype="bf16",
                        offload_folder=offload)
    for name, want in tensors.items():
        expect = want.to(torch.bfloat16) if want.is_floating_point() else want
        assert reference.bit_equal(sd[name], expect), name
    assert os.listdir(offload) == [], "the offload folder was left behind"
    with pytest.raises(ValueError, match="give an offload_folder"):
        shardcast.load(safetensors_ckpt, device_map={"layers": "disk", "": "cpu"}, dtype="bf16")


def test_keep_in_fp32_modules_and_dtype_auto(tmp_path, safetensors_ckpt, tensors):
    sd = shardcast.load(safetensors_ckpt, dtype=torch.float16, keep_in_fp32_modules=["norm"])
    assert sd["layers.0.norm.weight"].dtype == torch.float32
    assert sd["layers.0.attn.weight"].dtype == torch.float16
    # As transformers: only a half-precision dtype upcasts them; "keep" leaves every tensor as it is.
    kept = shardcast.load(safetensors_ckpt, keep_in_fp32_modules=["norm"])
    assert all(reference.bit_equal(kept[n], t) for n, t in tensors.items())
    # No config.json: "auto" is the first floating tensor's dtype (embed.weight, float32).
    assert all(t.dtype == torch.float32 for n, t in shardcast.load(safetensors_ckpt, dtype="auto").items()
               if tensors[n].is_floating_point())


def test_bad_maps_are_refused_naming_what_is_wrong(safetensors_ckpt):
    with pytest.raises(ValueError, match="tensor 'codes' is on no device"):
        shardcast.load(safetensors_ckpt, device_map={"layers": "cpu"})
    with pytest.raises(ValueError, match="fastest"):
        shardcast.load(safetensors_ckpt, device_map="fastest")
    with pytest.raises(ValueError, match="not one a device_map may name"):
        shardcast.load(safetensors_ckpt, device_map={"": "gpu"})


def test_plan_shows_the_map_and_budgets_without_loading(safetensors_ckpt):
    plan = shardcast.plan(safetensors_ckpt, device_map="auto", max_memory={"cpu": "5KB"})
    assert plan["budgets"] == {"cpu": 5000, "disk": None}
    assert plan["device_map"]["embed"] == "cpu"
    assert sum(plan["device_bytes"].values()) == plan["tensor_bytes"]
    assert plan["device_bytes"]["cpu"] <= 5000
