// safetensors: an 8-byte little-endian header length N, N bytes of JSON, then the data section.
// Validation follows the reference implementation (huggingface/safetensors); docs/formats.md lists every rule.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace shardcast {

class File;

inline constexpr uint64_t kSafetensorsMaxHeaderSize = 100'000'000;  // the reference's cap

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets inside the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // file offset of the data section: 8 + header length
  uint64_t data_size = 0;
  std::map<std::string, std::string> metadata;  // __metadata__
  std::vector<SafetensorsEntry> tensors;        // in data order (ascending begin)
};

// Validates the JSON header against a data section of data_size bytes. `label` (usually the file path) starts every
// error message. Throws kCorruptCheckpoint.
SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size, const std::string& label);

// Reads and validates the header of an open file.
SafetensorsHeader read_safetensors_header(const File& file);

// The header bytes a writer emits for tensors laid out in the given order from offset 0, padded with spaces to a
// multiple of 8 so the data section starts aligned. Includes the 8-byte length prefix.
std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& tensors,
                                      const std::map<std::string, std::string>& metadata);

// Overflow-checked element count of a shape; nullopt when it does not fit in 64 bits.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t* numel);

}  // namespace shardcast
