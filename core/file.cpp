#include "core/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <iterator>
#include <utility>

#include <fmt/format.h>

#include "core/error.h"
#include "core/io_stats.h"

namespace shardcast {

File::~File() {
  close();
}

File::File(File&& other) noexcept : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

void File::close() noexcept {
  if (fd_ >= 0 && ::close(fd_) != 0) {
    std::fprintf(stderr, "shardcast: warning: close('%s') failed: errno %d\n", path_.c_str(), errno);
  }
  fd_ = -1;
}

File File::duplicate() const {
  const int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) throw_system_error("dup", path_.string(), errno);
  return File(fd, path_);
}

File File::open_read(const std::filesystem::path& path) {
  int fd;
  do {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  struct stat by_path {};
  if (fd < 0 && errno == EWOULDBLOCK && ::stat(path.c_str(), &by_path) == 0 && S_ISREG(by_path.st_mode)) {
    // A regular file under another process's write lease (Samba, nfsd) refuses a non-blocking open: wait for it.
    do {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
  }
  if (fd < 0) throw_system_error("open", path.string(), errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    throw_system_error("fstat", path.string(), error);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                                              : "not a regular file";
    throw Error(ErrorCode::kInvalidArgument, fmt::format("'{}' is {}, expected a regular file", path.string(), kind));
  }
  // Regular files ignore O_NONBLOCK; clear it all the same so nothing downstream sees a surprising flag.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return File(fd, path);
}

File File::create_exclusive(const std::filesystem::path& path, mode_t mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_system_error("open(O_CREAT|O_EXCL)", path.string(), errno);
  return File(fd, path);
}

uint64_t File::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw_system_error("fstat", path_.string(), errno);
  return static_cast<uint64_t>(st.st_size);
}

FileIdentity File::identity() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw_system_error("fstat", path_.string(), errno);
  return {static_cast<uint64_t>(st.st_size), static_cast<uint64_t>(st.st_ino),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

void File::no_readahead() const {
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);  // advice: where it is not taken, reads are only larger
}

bool File::on_network_fs() const {
  struct statfs fs {};
  if (::fstatfs(fd_, &fs) != 0) throw_system_error("fstatfs", path_.string(), errno);
  // The f_type magic numbers of linux/magic.h and of the out-of-tree parallel file systems.
  constexpr uint64_t kNetwork[] = {
      0x6969,      // NFS
      0x517B,      // SMB
      0xFF534D42,  // CIFS
      0xFE534D42,  // SMB2
      0x0BD00BD0,  // Lustre
      0x47504653,  // GPFS
      0x19830326,  // BeeGFS
      0x00C36400,  // Ceph
      0x01021997,  // 9p
      0x65735546,  // FUSE (sshfs, s3fs, gcsfuse, ...)
      0x5346414F,  // OpenAFS
      0x6B414653,  // kAFS
  };
  const auto type = static_cast<uint64_t>(static_cast<uint32_t>(fs.f_type));
  return std::find(std::begin(kNetwork), std::end(kNetwork), type) != std::end(kNetwork);
}

std::string identity_text(const FileIdentity& identity) {
  return fmt::format("{} bytes, inode {}, modified at {}.{:09d}", identity.size, identity.inode,
                     identity.mtime_ns / 1'000'000'000, identity.mtime_ns % 1'000'000'000);
}

void File::read_exact_at(void* dst, size_t n, uint64_t offset) const {
  auto* out = static_cast<char*>(dst);
  size_t done = 0;
  while (done < n) {
    ssize_t got = ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_system_error("pread", fmt::format("{}' at byte {}, {} bytes", path_.string(), offset + done, n - done),
                         errno);
    }
    if (got == 0) {
      throw Error(ErrorCode::kCorruptCheckpoint,
                  fmt::format("'{}': file ends at byte {}, but {} bytes were needed from byte {}", path_.string(),
                              offset + done, n, offset));
    }
    done += static_cast<size_t>(got);
  }
  count_checkpoint_read(n);
}

void File::write_all(const void* src, size_t n) {
  const auto* in = static_cast<const char*>(src);
  size_t done = 0;
  while (done < n) {
    ssize_t put = ::write(fd_, in + done, n - done);
    if (put < 0) {
      if (errno == EINTR) continue;
      throw_system_error("write", path_.string(), errno);
    }
    done += static_cast<size_t>(put);
  }
}

void File::sync() {
  if (::fsync(fd_) != 0) throw_system_error("fsync", path_.string(), errno);
}

std::string read_text_file(const std::filesystem::path& path) {
  File file = File::open_read(path);
  std::string text(file.size(), '\0');
  file.read_exact_at(text.data(), text.size(), 0);
  return text;
}

}  // namespace shardcast
