#include "shm/file_view.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "core/io_stats.h"
#include "shm/fault_messages.h"

namespace shardcast::shm {
namespace {

constexpr uint64_t kPrefetchRead = 8ull << 20;  // per pread where MADV_POPULATE_READ is missing
constexpr uint64_t kWillNeedStep = 128 << 10;   // the smallest readahead size a block device has by default

std::string changed_text(const std::filesystem::path& path, const FileIdentity& then, const FileIdentity& now,
                         const std::string& when) {
  return fmt::format(
      "'{}' changed {} (then {}; now {}): a checkpoint must not be rewritten in place while it is "
      "loaded or mapped; write a new file and rename it over the old one",
      path.string(), when, identity_text(then), identity_text(now));
}

}  // namespace

std::shared_ptr<FileView> FileView::map(const std::filesystem::path& path, Access access,
                                        const FileIdentity* expected) {
  std::shared_ptr<FileView> view(new FileView);
  view->file_ = File::open_read(path);
  const FileIdentity identity = view->identity_ = view->file_.identity();
  if (expected && identity != *expected) {
    throw Error(ErrorCode::kCorruptCheckpoint, changed_text(path, *expected, identity, "since its header was read"));
  }
  if (identity.size == 0) return view;
  const bool read_only = access == Access::kReadOnly;
  void* data = ::mmap(nullptr, identity.size, read_only ? PROT_READ : PROT_READ | PROT_WRITE,
                      read_only ? MAP_SHARED : MAP_PRIVATE, view->file_.fd(), 0);
  if (data == MAP_FAILED) throw_system_error("mmap", path.string(), errno);
  view->data_ = static_cast<uint8_t*>(data);
  view->size_ = identity.size;
  watch_mapping(view->data_, view->size_, "checkpoint file '" + path.string() + "'",
                read_only ? MappingKind::kReadOnlyFile : MappingKind::kFile);
  // Between open and mmap the file may have been cut short: the mapping would then fault later, not now.
  if (expected) view->check_unchanged(*expected, "while it was being mapped");
  return view;
}

FileView::~FileView() {
  if (!data_) return;
  unwatch_mapping(data_);
  ::munmap(data_, size_);
}

uint64_t FileView::resident_bytes(uint64_t first, uint64_t end) const {
  if (first >= end) return 0;
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((end - first + page - 1) / page);
  if (::mincore(data_ + first, end - first, resident.data()) != 0)
    throw_system_error("mincore", path().string(), errno);
  uint64_t bytes = 0;
  for (size_t i = 0; i < resident.size(); ++i) {
    if (resident[i] & 1) bytes += std::min(end, first + (i + 1) * page) - (first + i * page);
  }
  return bytes;
}

void FileView::prefetch(uint64_t offset, uint64_t length) {
  if (length == 0) return;
  if (offset + length > size_) {
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}' is {} bytes, but bytes up to {} were asked for",
                                                           path().string(), size_, offset + length));
  }
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t first = offset / page * page;
  const uint64_t end = std::min(size_, (offset + length + page - 1) / page * page);
  const uint64_t missing = (end - first) - resident_bytes(first, end);
  if (missing == 0) return;
  // Exactly the range: its reads queued at once (WILLNEED reads at most the device's readahead size per call, so in
  // steps no device goes below), then faulted in without the fault path's read-around, which would read ahead into
  // pages another rank or node is to read.
  for (uint64_t at = first; at < end; at += kWillNeedStep) {
    ::posix_fadvise(file_.fd(), static_cast<off_t>(at), static_cast<off_t>(std::min(kWillNeedStep, end - at)),
                    POSIX_FADV_WILLNEED);
  }
  ::madvise(data_ + first, end - first, MADV_RANDOM);
  const int populated = ::madvise(data_ + first, end - first, MADV_POPULATE_READ);
  const int error = errno;
  ::madvise(data_ + first, end - first, MADV_NORMAL);  // later faults (pages reclaimed since) read ahead as usual
  if (populated != 0 && error == EINVAL) {             // a kernel before 5.14: read the range through the page cache
    std::vector<uint8_t> bounce(std::min<uint64_t>(end - first, kPrefetchRead));
    for (uint64_t at = first; at < end; at += bounce.size()) {
      file_.read_exact_at(bounce.data(), std::min<uint64_t>(bounce.size(), end - at), at);
    }
    return;
  }
  if (populated != 0) {
    check_unchanged(identity_, "while it was being loaded");  // names a truncation, if that is what it was
    if (error == EFAULT) {
      throw Error(ErrorCode::kCorruptCheckpoint,
                  fmt::format("'{}': bytes {} to {} cannot be read through its mapping: the file was cut short while "
                              "loading",
                              path().string(), first, end));
    }
    throw_system_error("madvise(MADV_POPULATE_READ)", path().string(), error);
  }
  count_checkpoint_read(missing);
}

void FileView::check_unchanged(const FileIdentity& expected, const std::string& when) const {
  const FileIdentity now = file_.identity();
  if (now != expected) throw Error(ErrorCode::kCorruptCheckpoint, changed_text(path(), expected, now, when));
}

}  // namespace shardcast::shm
