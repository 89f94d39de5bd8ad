// What a node's kept copy stands for (shm/kept_copies.h): the key under which a job finds the segments an earlier job
// staged on this node, and the line `shardcast ls` shows for it.
#pragma once

#include <string>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/plan.h"

namespace shardcast {

// A hash (32 hex digits) of everything the bytes staged on this node depend on:
// - the checkpoint: the catalog as rank 0 read it (index, every header: names, dtypes, shapes, offsets, metadata) and
//   each shard file as this node sees it now (device, inode, size, mtime_ns, ctime_ns: a rewrite in place, even one
//   that keeps size and mtime, moves ctime);
// - the request, as what it made of the staged segments (`staged`, plan indices): each segment's tensors, dtypes and
//   offsets (PlannedSegment::layout_hash), so a changed dtype, selection or tensor-parallel rule is another key, and
//   another number of ranks or readers is not.
// Throws kSystem naming a shard file this node cannot stat.
std::string kept_key(const Catalog& catalog, const Plan& plan, const std::vector<size_t>& staged);

// "291 tensors in 3 segments, bf16+f32" for people.
std::string kept_request(const Plan& plan, const LoadRequest& request, const std::vector<size_t>& staged);

}  // namespace shardcast
