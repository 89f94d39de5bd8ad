// Deterministic, transformer-shaped checkpoints of a requested size: the demo's checkpoint and the benchmarks' input.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "coordinator/sharded_writer.h"
#include "coordinator/tensor_data.h"

namespace shardcast {

inline constexpr uint64_t kSynthMinSize = 1'000'000;

// A Llama-like layout totalling exactly `size` bytes: bf16 projections, f32 norms, an f16 rotary table, extras in
// every other dtype (a 0-dim f64, an empty tensor, bool, int and f8 buffers) and a u8 tail that makes up the exact
// size. With torch_dtypes_only, only dtypes a torch .bin can hold (no U16/U32/U64/F8). In write order.
std::vector<TensorSpec> synth_layout(uint64_t size, bool torch_dtypes_only);

// The tensor's bytes: a pure function of its name, dtype and shape (finite values for float dtypes, 0/1 for BOOL).
Bytes synth_tensor_bytes(const TensorSpec& spec);

// Writes the checkpoint; max_shard_size 0 means size / 4 (several shards). torch_dtypes_only as in synth_layout
// (always for the .bin format).
void synthesize_checkpoint(const std::filesystem::path& dir, uint64_t size, uint64_t max_shard_size,
                           CheckpointFormat format, bool torch_dtypes_only = false);

}  // namespace shardcast
