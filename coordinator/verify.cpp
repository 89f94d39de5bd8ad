#include "coordinator/verify.h"

#include <fmt/format.h>

#include "coordinator/catalog.h"
#include "coordinator/shard_reader.h"

namespace shardcast {

VerifyReport verify_checkpoint(const std::filesystem::path& path) {
  VerifyReport report;
  try {
    std::vector<Error> problems;
    std::vector<std::string> warnings;
    Catalog catalog = scan_catalog(path, &problems, &warnings);
    for (const Error& e : problems) report.problems.push_back(e.what());
    for (const std::string& w : warnings) report.problems.push_back(w);
    report.shards = catalog.shards.size();
    report.tensors = catalog.tensors.size();
    for (uint32_t i = 0; i < catalog.shards.size(); ++i) {
      if (!catalog.shards[i].readable) continue;  // its problem is already listed
      try {
        read_shard_tensors(catalog, i, [&](const TensorInfo& t, const Bytes& bytes) {
          report.bytes_read += bytes.size;
          if (t.dtype != DType::kBool) return;
          for (size_t k = 0; k < bytes.size; ++k) {
            if (bytes.data[k] > 1) {
              report.problems.push_back(fmt::format("shard '{}': BOOL tensor '{}' holds byte value {} at element {}",
                                                    catalog.shards[i].file, t.name, bytes.data[k], k));
              break;
            }
          }
        });
      } catch (const Error& e) {
        report.problems.push_back(e.what());
      }
    }
  } catch (const Error& e) {
    report.problems.push_back(e.what());
  }
  return report;
}

}  // namespace shardcast
