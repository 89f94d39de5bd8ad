// Move-only file descriptor with the few operations shardcast needs, each failing with the path in the message.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>

namespace shardcast {

// What says a file is still the one that was read: a mapping of it, or a kept copy staged from it, is trusted only
// while these match. (st_dev is left out: it differs between the nodes mounting one network file system.)
struct FileIdentity {
  uint64_t size = 0;
  uint64_t inode = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileIdentity& o) const { return size == o.size && inode == o.inode && mtime_ns == o.mtime_ns; }
  bool operator!=(const FileIdentity& o) const { return !(*this == o); }
};

// "N bytes, inode I, modified at T": for messages comparing two identities.
std::string identity_text(const FileIdentity& identity);

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
  FileIdentity identity() const;
  // Reads through this descriptor fetch the pages asked for and no more (POSIX_FADV_RANDOM): a header read must not
  // pull megabytes of tensor data (read_ahead_kb) that another rank or node is to read.
  void no_readahead() const;
  // On NFS, SMB, Lustre, GPFS, BeeGFS, Ceph, 9p or FUSE: where mapped pages may be fetched again over the network at
  // any later time, or change under the job when another client writes the file.
  bool on_network_fs() const;

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
