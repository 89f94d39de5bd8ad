#include "coordinator/verify.h"

#include <fmt/format.h>

#include "coordinator/bool_check.h"
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
          if (!t.tied_to.empty()) return;  // the same bytes as its original's
          report.bytes_read += bytes.size;
          if (t.dtype != DType::kBool) return;
          try {
            check_bool_bytes(t.name, bytes.data, bytes.size);
          } catch (const Error& e) {
            report.problems.push_back(
                fmt::format("{}: '{}': {}", shard_context(catalog, i), catalog.shards[i].path.string(), e.what()));
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
