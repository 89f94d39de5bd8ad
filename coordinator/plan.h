// The plan: the one place that decides what a node stages, where each tensor sits in which segment, in which dtype,
// and which local rank reads it. Stage and worker execute it; they do not re-decide. Deterministic: every rank
// computes the same plan from the same catalog and request, and the layout hash proves it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

// May shared, cow and private tensors be mappings of the checkpoint files themselves (the page cache, the node's one
// copy) instead of copies staged into segments? docs/loading.md "Mapped from the page cache" says why auto is the
// default.
enum class MapFiles {
  kAuto,    // map what can be mapped, unless its shard is on a network file system
  kAlways,  // map what can be mapped, network file systems included
  kNever,   // stage everything
};
std::string_view map_files_name(MapFiles map_files);  // "auto", "always", "never"
MapFiles parse_map_files(const std::string& name);    // throws kInvalidArgument

// Where a planned tensor's bytes come from, and why.
enum class TensorSource {
  kMapped,     // the checkpoint file's own bytes, mapped
  kStaged,     // staged: mapping is off (map_files never, or placement cuda)
  kConverted,  // staged: loaded in another dtype than the file's
  kBin,        // staged: a .bin storage has no byte range of its own in the file (a zip record, maybe strided)
  kUnaligned,  // staged: its file offset is not a multiple of its element size
  kNetworkFs,  // staged: map_files auto, and its shard is on a network file system
  kSplit,      // staged: its run of the file is read by several nodes (the even split between nodes cut it)
  kReceived,   // staged: mapped on the node that read it, sent to this node (a load report's, never a plan's)
};
std::string_view source_name(TensorSource source);  // "mapped", "staged (converted)", ...

struct LoadRequest {
  // Floating tensors (F16, BF16, F32, F64) are converted to this dtype once per node; nullopt ("keep") keeps each
  // tensor's. Integer, bool and F8 tensors always keep theirs.
  std::optional<DType> dtype;
  // dtype "auto" (transformers' torch_dtype="auto"): make_plan sets `dtype` to auto_dtype(catalog).
  bool dtype_auto = false;
  // When `dtype` is F16 or BF16, floating tensors of these modules load in F32 instead (transformers'
  // keep_in_fp32_modules): an entry matches a name holding it as whole components ("wo" matches "block.0.wo.weight",
  // not "block.0.wout.weight").
  std::vector<std::string> keep_in_fp32;
  // Which tensors: empty means all; an entry ending in '*' is a prefix ("model.layers.0.*"), others exact names.
  // A pattern that matches nothing is an error.
  std::vector<std::string> tensors;
  // The list is exact and complete: an empty `tensors` selects nothing (load_into when no name matches the module).
  bool only_listed = false;
  // Stage one shard at a time (private placement: the node never holds more than one shard in shared memory).
  bool one_shard_at_a_time = false;
  // Local ranks that read from storage: all of them (true), or only the node leader.
  bool parallel_read = true;
  // Mappable tensors become mapped segments (PlannedSegment::mapped) rather than staged ones.
  MapFiles map_files = MapFiles::kNever;
  // Between nodes: a node reads at most its even share of the bytes plus this; segments and tensors are cut only
  // where this slack would be exceeded (each cut costs a mapped run its mapping).
  uint64_t node_share_slack = 64ull << 20;
};

struct PlannedTensor {
  uint32_t catalog_index = 0;  // into Catalog::tensors
  DType dtype = DType::kF32;   // in the segment (after conversion)
  uint64_t offset = 0;         // in the segment's data, 64-byte aligned
  uint64_t nbytes = 0;         // in the segment
  // A tied .bin weight: the same bytes (offset, nbytes, dtype) as an earlier tensor of this segment, so nothing is
  // staged for it and the node holds the storage once, as torch.load does.
  bool tied = false;
  TensorSource source = TensorSource::kStaged;
};

// One rank's read of a tensor's elements [first, first + count) from storage: the whole tensor, unless the even split
// between nodes cut it (at a page boundary of the file).
struct PlannedRead {
  uint32_t tensor = 0;  // index into PlannedSegment::tensors
  uint64_t first = 0;   // elements
  uint64_t count = 0;
  int node = 0;    // the node whose rank reads it
  int reader = 0;  // that rank's local rank
};

// Bytes [begin, end) of a segment's data, read by `node`'s ranks: the exchange sends each piece from its node to the
// other nodes. The pieces of a segment cover it in order.
struct SegmentPiece {
  uint64_t begin = 0;
  uint64_t end = 0;
  int node = 0;
};

struct PlannedSegment {
  uint32_t shard = 0;
  uint64_t size = 0;
  std::vector<PlannedTensor> tensors;  // in source file order
  std::vector<PlannedRead> reads;      // in tensor and element order; none for tied tensors
  std::vector<SegmentPiece> pieces;
  // The node that reads all of it, or -1 when the split between nodes divides it.
  int sole_node() const;
  // A run of adjacent mappable tensors: [file_offset, file_offset + size) of the shard file, tensors at their own
  // offsets within it (file_offset is 64-byte aligned, so alignment is kept). The node that reads it maps the file;
  // other nodes receive the run into a segment. A run the split between nodes divides is staged everywhere instead.
  bool mapped = false;
  uint64_t file_offset = 0;
  // What its bytes are (shard, size, tensors: names, dtypes, offsets), not who reads them: a segment's header carries
  // it, and a kept copy staged by another job with other ranks or nodes matches it.
  uint64_t layout_hash = 0;
};

struct Plan {
  std::vector<PlannedSegment> segments;      // one per shard holding a requested tensor
  std::vector<std::vector<size_t>> batches;  // segment indices staged and released together
  uint64_t total_bytes = 0;                  // sum of segment sizes (tensors 64-byte aligned), mapped ones included
  uint64_t tensor_bytes = 0;                 // the planned tensors' bytes in their loaded dtypes, tied ones once
  uint64_t layout_hash = 0;  // the segments' hashes and who reads what: every rank of a job must plan the same
  size_t tensor_count = 0;
};

inline constexpr uint64_t kTensorAlignment = 64;

// Each shard's selected tensors become a staged segment and, with map_files, mapped runs. The job reads each byte from
// storage once, split between `node_count` nodes so that each reads at most S/K + node_share_slack (+ a page): .bin
// segments whole (a .bin shard is decoded whole), largest first onto the least loaded node; then the safetensors
// bytes in plan order, node after node, cutting a segment or tensor only where a node's share would overflow the
// slack. Within a node, reads go to its `local_size` ranks. Throws kInvalidArgument for a pattern matching nothing or
// an impossible dtype.
Plan make_plan(const Catalog& catalog, const LoadRequest& request, int local_size, int node_count = 1);

// What dtype "auto" loads a checkpoint in, as transformers decides it: config.json's torch_dtype (or dtype), else the
// dtype of the first floating tensor (by name) of the first shard holding one; nullopt when no tensor is floating.
// Throws kInvalidArgument when config.json cannot be read or names a dtype that floating tensors cannot take.
std::optional<DType> auto_dtype(const Catalog& catalog);

// The dtype `tensor` has once loaded under `request` (its dtype resolved: not dtype_auto).
DType loaded_dtype(const TensorInfo& tensor, const LoadRequest& request);

// `request` with dtype "auto" resolved for `catalog`, and the dtype checked: kInvalidArgument if floating tensors
// cannot be loaded in it.
LoadRequest resolve_dtype(const Catalog& catalog, LoadRequest request);

// Does `name` match `pattern`: the exact name, or a prefix when the pattern ends in '*'?
bool pattern_matches(const std::string& pattern, const std::string& name);

// Throws kInvalidArgument naming the first pattern that matches no tensor of the catalog.
void check_patterns_match(const Catalog& catalog, const std::vector<std::string>& patterns);

// Is `name` selected by the request's patterns?
bool tensor_selected(const std::string& name, const std::vector<std::string>& patterns);

}  // namespace shardcast
