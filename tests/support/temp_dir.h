// A fresh directory under $TMPDIR, removed with everything in it when the test ends.
#pragma once

#include <filesystem>

namespace shardcast::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::filesystem::path& p) const { return path_ / p; }

 private:
  std::filesystem::path path_;
};

// Writes bytes to a file (replacing it), creating parent directories.
void write_file(const std::filesystem::path& path, const std::string& bytes);
std::string read_file(const std::filesystem::path& path);

// Writes back and drops from the page cache every file in `dir` (posix_fadvise DONTNEED: no root needed), so a load
// that maps them must read them from storage, and its byte counts mean what they say.
void evict_page_cache(const std::filesystem::path& dir);

}  // namespace shardcast::testing
