// libFuzzer target: model.safetensors.index.json beside two sound shards (tensors a, b in the first, c, d in
// the second), verified as a directory: the index's JSON, its weight_map and total_size against the shards, shard
// paths.
#include <map>
#include <string>
#include <vector>

#include "coordinator/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

void write_shard(const char* name, const std::vector<shardcast::SafetensorsEntry>& tensors) {
  std::string bytes = shardcast::encode_safetensors_header(tensors, {{"format", "pt"}});
  bytes.append(tensors.back().end, '\0');
  shardcast::fuzz::write_input(name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using shardcast::DType;
  write_shard("model-00001-of-00002.safetensors", {{"a", DType::kF32, {2}, 0, 8}, {"b", DType::kI64, {1}, 8, 16}});
  write_shard("model-00002-of-00002.safetensors", {{"c", DType::kBF16, {3}, 0, 6}, {"d", DType::kBool, {5}, 6, 11}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shardcast::fuzz::write_input("model.safetensors.index.json", data, size);
  shardcast::fuzz::verify(shardcast::fuzz::checkpoint_dir());
  return 0;
}
