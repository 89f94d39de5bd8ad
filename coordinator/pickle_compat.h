// LibTorch 1.13's unpickler cannot read what torch.save writes for a real state dict:
//  - collections.OrderedDict (what Module.state_dict() returns) becomes None, so its items cannot be set;
//  - a one-item dict is pickled with SETITEM, an opcode it does not know (only SETITEMS);
//  - the OrderedDict's _metadata is attached with BUILD, which it applies only to objects.
// This rewrites the pickle into one with the same tensors that it reads: OrderedDict() becomes
// torch.jit._pickle.restore_type_tag({}, "Dict[str, Tensor]") (a plain dict), each SETITEM becomes
// MARK key value SETITEMS, and BUILD on such a dict becomes SETITEMS under kPickleStateKey (the reader drops it).
// Pure byte work: no torch here.
#pragma once

#include <string>
#include <string_view>

namespace shardcast {

// The key under which a dict's BUILD state (an OrderedDict's _metadata) ends up; no real tensor name starts with \x01.
inline constexpr char kPickleStateKey[] = "\x01shardcast-build-state";

// The rewritten pickle. A stream LibTorch's unpickler could crash on (it checks little: its stack, marks, memo, the
// dtype of a storage id, the depth it recurses to), or that uses an opcode or global a torch.save state dict never
// does, is refused with kCorruptCheckpoint naming the byte offset (docs/formats.md lists the rules).
std::string make_pickle_loadable_by_libtorch(std::string_view pickle);

}  // namespace shardcast
