// Mapped memory faults for reasons a user can act on; this makes the bare signal say which and why first.
// - SIGSEGV: a write to a read-only mapping (placement shared). The node's one copy is not this rank's to change.
// - SIGBUS: a read past the end of a mapped checkpoint file that was truncated (or rewritten in place) after it was
//   mapped. The kernel has no page to give; only the file's owner can prevent it (docs/loading.md).
// One handler per signal, installed with the first watched mapping and chained to the one before it (Python's
// faulthandler, a debugger's, the default): it prints which mapping and byte, then lets the previous handler run as if
// it had been alone.
#pragma once

#include <cstddef>
#include <string>

namespace shardcast::shm {

enum class MappingKind {
  kReadOnlySegment,  // a segment mapped read-only
  kReadOnlyFile,     // a checkpoint file mapped read-only
  kFile,             // a checkpoint file mapped copy-on-write
};

// [begin, begin + size) is a mapping of `name`. At most 1024 are watched at once; more are left unwatched (they still
// fault, without the message).
void watch_mapping(const void* begin, size_t size, const std::string& name, MappingKind kind);
void unwatch_mapping(const void* begin);

}  // namespace shardcast::shm
