// Read-only segment mappings (placement shared) fault when written to, as they must: the node's one copy is not this
// rank's to change. This turns the bare SIGSEGV into one that says so first: a SIGSEGV handler, installed with the
// first read-only mapping and chained to the one before it (Python's faulthandler, a debugger's, the default), prints
// which segment was written and what to do, then lets the previous handler run as if it had been alone.
#pragma once

#include <cstddef>
#include <string>

namespace shardcast::shm {

// [begin, begin + size) is a read-only mapping of segment `name`. At most 1024 are watched at once; more are left
// unwatched (they still fault, without the message).
void watch_read_only(const void* begin, size_t size, const std::string& name);
void unwatch_read_only(const void* begin);

}  // namespace shardcast::shm
