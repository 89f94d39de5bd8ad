#include "coordinator/digest.h"

#include <map>

#include <fmt/format.h>

#include "coordinator/shard_reader.h"
#include "core/sha256.h"

namespace shardcast {

std::string digest_line(const TensorSpec& spec, const void* data, size_t size) {
  return fmt::format("{}\t{}\t{}\t{}", spec.name, dtype_name(spec.dtype), shape_string(spec.shape),
                     sha256_hex(data, size));
}

std::vector<std::string> digest_checkpoint(const Catalog& catalog) {
  std::map<std::string, std::string> lines;
  read_all_tensors(catalog, [&](const TensorInfo& t, const Bytes& bytes) {
    lines[t.name] = digest_line(t, bytes.data, bytes.size);
  });
  std::vector<std::string> out;
  out.reserve(lines.size());
  for (auto& [name, line] : lines) out.push_back(std::move(line));
  return out;
}

}  // namespace shardcast
