// Move-only file descriptor with the few operations shardcast needs, each failing with the path in the message.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>

namespace shardcast {

class File {
 public:
  File() = default;
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  static File open_read(const std::filesystem::path& path);
  // O_CREAT | O_EXCL: never overwrites.
  static File create_exclusive(const std::filesystem::path& path, mode_t mode = 0644);
  // Takes ownership of an open descriptor (one received from another process); `what` names it in messages.
  static File adopt(int fd, std::filesystem::path what) { return File(fd, std::move(what)); }
  // A second descriptor of the same open file (close-on-exec).
  File duplicate() const;

  int fd() const { return fd_; }
  const std::filesystem::path& path() const { return path_; }
  uint64_t size() const;

  // Reads exactly n bytes at offset (retrying EINTR and short reads); a file that ends early is kCorruptCheckpoint
  // naming the path, the offset and how many bytes were missing.
  void read_exact_at(void* dst, size_t n, uint64_t offset) const;
  void write_all(const void* src, size_t n);
  void sync();

 private:
  File(int fd, std::filesystem::path path) : fd_(fd), path_(std::move(path)) {}
  void close() noexcept;

  int fd_ = -1;
  std::filesystem::path path_;
};

// Whole small file (an index, a JSON report) as a string.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace shardcast
