#include "tests/support/hub_cache.h"

#include "core/sha256.h"
#include "tests/support/temp_dir.h"

namespace shardcast::testing {
namespace fs = std::filesystem;

fs::path move_into_hub_cache(const fs::path& checkpoint, const fs::path& cache, const std::string& repo) {
  const std::string revision = "0123456789abcdef0123456789abcdef01234567";
  const fs::path root = cache / repo, snapshot = root / "snapshots" / revision;
  fs::create_directories(root / "blobs");
  fs::create_directories(snapshot);
  write_file(root / "refs" / "main", revision);
  for (const auto& entry : fs::directory_iterator(checkpoint)) {
    const std::string bytes = read_file(entry.path());
    const std::string hash = sha256_hex(bytes.data(), bytes.size());
    fs::rename(entry.path(), root / "blobs" / hash);
    fs::create_symlink(fs::path("..") / ".." / "blobs" / hash, snapshot / entry.path().filename());
  }
  return snapshot;
}

}  // namespace shardcast::testing
