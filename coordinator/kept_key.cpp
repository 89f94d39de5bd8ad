#include "coordinator/kept_key.h"

#include <sys/stat.h>

#include <cerrno>
#include <set>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "coordinator/catalog_wire.h"
#include "core/error.h"
#include "core/file.h"
#include "core/sha256.h"
#include "shardcast/config.h"

namespace shardcast {

std::string kept_key(const Catalog& catalog, const Plan& plan, const std::vector<size_t>& staged) {
  // One checkpoint however its path was spelled: "ckpt", "./ckpt/" and "/data/ckpt" name the same copy.
  Catalog canonical = catalog;
  canonical.root = std::filesystem::weakly_canonical(catalog.root);
  if (!catalog.index_path.empty()) canonical.index_path = std::filesystem::weakly_canonical(catalog.index_path);
  for (ShardInfo& shard : canonical.shards) shard.path = std::filesystem::weakly_canonical(shard.path);
  // The version: a later shardcast may stage the same request differently (a conversion or decoding fixed).
  std::string text = fmt::format("shardcast {} kept copy\n{}\n", SHARDCAST_VERSION, encode_catalog(canonical));
  for (const ShardInfo& shard : canonical.shards) {
    // open + fstat rather than stat: on NFS an open revalidates the attributes (close-to-open), stat may be cached.
    const File file = File::open_read(shard.path);
    struct stat st {};
    if (::fstat(file.fd(), &st) != 0) throw_system_error("fstat", shard.path.string(), errno);
    text += fmt::format("{} {} {} {} {}.{:09} {}.{:09}\n", shard.path.string(), static_cast<uint64_t>(st.st_dev),
                        static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size), st.st_mtim.tv_sec,
                        st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
  }
  for (size_t i : staged) {
    const PlannedSegment& s = plan.segments[i];
    text += fmt::format("segment {} shard {} size {} layout {:016x}\n", i, s.shard, s.size, s.layout_hash);
  }
  return sha256_hex(text.data(), text.size()).substr(0, 32);
}

std::string kept_request(const Plan& plan, const LoadRequest& request, const std::vector<size_t>& staged) {
  size_t tensors = 0;
  std::set<std::string_view> dtypes;
  for (size_t i : staged) {
    for (const PlannedTensor& p : plan.segments[i].tensors) dtypes.insert(dtype_name(p.dtype));
    tensors += plan.segments[i].tensors.size();
  }
  std::string text = fmt::format("{} tensors in {} segments, {}", tensors, staged.size(), fmt::join(dtypes, "+"));
  if (!request.tensors.empty()) text += fmt::format(", selected by {} patterns", request.tensors.size());
  return text;
}

}  // namespace shardcast
