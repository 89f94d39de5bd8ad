// The central directory of a torch.save zip archive, read by shardcast itself: LibTorch's reader (miniz, built with
// its CRC checks off) hands back damaged records as if they were sound, and accepts records it would have to inflate.
// Pure byte work: no torch here.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/file.h"

namespace shardcast {

struct ZipRecord {
  uint16_t method = 0;  // 0: stored, the only method torch.save writes
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;  // the record's bytes, after its local header
};

// Records by name below the archive's top folder ("data/0" for "archive/data/0"), as LibTorch's reader names them.
// Throws kCorruptCheckpoint naming the file and what is wrong: no end-of-central-directory record, a directory
// outside the file, a record that is compressed, encrypted, without its local header, outside the file, or outside
// the one top folder every torch.save record shares.
std::map<std::string, ZipRecord> read_zip_directory(const File& file);

// Throws kCorruptCheckpoint naming `label` (the file) and the record unless `size` bytes at `data` are the record's
// size and CRC-32.
void check_zip_record(const std::string& label, const std::string& name, const ZipRecord& record, const void* data,
                      size_t size);

// A record's bytes, read from the file and checked as check_zip_record does.
std::string read_zip_record(const File& file, const std::string& name, const ZipRecord& record);

uint32_t crc32_of(const void* data, size_t size);

}  // namespace shardcast
