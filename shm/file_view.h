// A whole file mapped into memory: device "disk" of a device_map, where the page cache is the node's one copy of a
// tensor (reclaimable, unlike a segment) and nothing is staged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include "shm/segment.h"

namespace shardcast::shm {

class FileView {
 public:
  // Maps `path` whole: read-only (a write faults, naming the file) or copy-on-write (a write stays in this process).
  // An empty file maps to nothing (data() is null). Throws kSystem naming the path.
  static std::shared_ptr<FileView> map(const std::filesystem::path& path, Access access);
  ~FileView();
  FileView(const FileView&) = delete;
  FileView& operator=(const FileView&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  struct Mapping;  // the Boost mapping, defined in file_view.cpp
  FileView() = default;
  std::unique_ptr<Mapping> mapping_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool watched_ = false;
};

}  // namespace shardcast::shm
