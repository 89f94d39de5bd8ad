// A whole checkpoint file mapped into memory: the page cache is the node's one copy of its tensors (reclaimable,
// unlike a segment), and nothing is staged. Placement shared/cow/private with map_files, and device "disk".
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "core/file.h"
#include "shm/segment.h"

namespace shardcast::shm {

class FileView {
 public:
  // Maps `path` whole: read-only (a write faults, naming the file) or copy-on-write (a write stays in this process).
  // With `expected`, the file mapped must still be the one its header was read from (same size, inode and mtime):
  // otherwise kCorruptCheckpoint says what changed. An empty file maps to nothing (data() is null). A read past the end
  // of a file truncated later raises SIGBUS, which first says so (shm/fault_messages.h). Throws kSystem naming the
  // path.
  static std::shared_ptr<FileView> map(const std::filesystem::path& path, Access access,
                                       const FileIdentity* expected = nullptr);
  ~FileView();
  FileView(const FileView&) = delete;
  FileView& operator=(const FileView&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return file_.path(); }

  // Brings the pages of [offset, offset + length) into the page cache and this mapping: their reads queued at once
  // (POSIX_FADV_WILLNEED), then MADV_POPULATE_READ without read-around, so the storage reads the range at full speed
  // and nothing past it (the pages next to it are another rank's, or another node's, to read); pread() where the
  // kernel lacks MADV_POPULATE_READ (before 5.14). A warm cache costs a residency check (mincore). The pages that were
  // not resident count as checkpoint bytes read (core/io_stats.h). A file cut short under the range is
  // kCorruptCheckpoint, not a SIGBUS.
  void prefetch(uint64_t offset, uint64_t length);

  // Bytes of [first, end) in the page cache now (mincore); `first` page-aligned, `end` a page boundary or size().
  uint64_t resident_bytes(uint64_t first, uint64_t end) const;

  // kCorruptCheckpoint when the open file no longer is `expected` (truncated or rewritten in place since mapping).
  void check_unchanged(const FileIdentity& expected, const std::string& when) const;

 private:
  FileView() = default;
  File file_;
  FileIdentity identity_;  // when mapped
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace shardcast::shm
