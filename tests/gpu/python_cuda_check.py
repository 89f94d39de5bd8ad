"""On a GPU machine: `import shardcast` built against this torch loads CHECKPOINT to cuda from Python, bit-exact
against the CPU load, in the checkpoint's dtype and in bf16, and through load_into(assign=True) on a meta model."""

import sys

import torch

import shardcast

checkpoint = sys.argv[1]
print("shardcast", shardcast.__version__, "torch", torch.__version__, shardcast.info()["gpu"])
host = shardcast.load(checkpoint, placement="private")
device = shardcast.load(checkpoint, placement="cuda")
assert sorted(device) == sorted(host)
for name, t in device.items():
    assert t.device.type == "cuda", (name, t.device)
    assert torch.equal(t.cpu(), host[name]), name
cast = shardcast.load(checkpoint, placement="cuda", dtype=torch.bfloat16)
for name, t in cast.items():
    want = host[name].to(torch.bfloat16) if host[name].is_floating_point() else host[name]
    assert torch.equal(t.cpu(), want), name


class Holder(torch.nn.Module):
    """Parameters named as the checkpoint's tensors (dots become nested modules)."""

    def __init__(self, tensors):
        super().__init__()
        for name, t in tensors.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, torch.nn.Parameter(torch.empty_like(t), requires_grad=t.is_floating_point()))


with shardcast.init_empty_weights():
    model = Holder(host)
result = shardcast.load_into(model, checkpoint, placement="cuda", assign=True)
assert not result.missing_keys and not result.unexpected_keys, result
assert all(p.device.type == "cuda" for p in model.parameters())
print(f"python cuda check: {len(device)} tensors bit-exact on {next(iter(device.values())).device}; "
      f"load_into(assign=True) put {result.loaded} on cuda")
