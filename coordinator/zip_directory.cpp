#include "coordinator/zip_directory.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <zlib.h>

#include "core/error.h"

namespace shardcast {
namespace {

constexpr uint32_t kEndOfDirectory = 0x06054b50, kZip64EndOfDirectory = 0x06064b50, kZip64Locator = 0x07064b50,
                   kDirectoryEntry = 0x02014b50, kLocalHeader = 0x04034b50;
constexpr size_t kEndOfDirectorySize = 22, kZip64LocatorSize = 20, kZip64EndOfDirectorySize = 56, kEntrySize = 46,
                 kLocalHeaderSize = 30;
// Encrypted (0, 6), patched (5) or with a masked local header (13): what miniz refuses to read.
constexpr uint64_t kUnreadableFlags = 0x0001 | 0x0020 | 0x0040 | 0x2000;
constexpr size_t kMaxComment = 0xffff;

uint64_t little_endian(const uint8_t* p, size_t width) {
  uint64_t n = 0;
  for (size_t i = 0; i < width; ++i) n |= static_cast<uint64_t>(p[i]) << (8 * i);
  return n;
}

}  // namespace

std::map<std::string, ZipRecord> read_zip_directory(const File& file) {
  const std::string label = file.path().string();
  auto corrupt = [&](const std::string& what) {
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': zip archive: {}", label, what));
  };
  const uint64_t file_size = file.size();
  if (file_size < kEndOfDirectorySize) corrupt("too short for an end-of-central-directory record");

  // The end record is the last 22 bytes (torch.save writes no archive comment); only if it is not there, search the
  // last 64 KiB for it, as a comment may follow it.
  uint64_t tail_size = kEndOfDirectorySize;
  std::vector<uint8_t> tail(tail_size);
  file.read_exact_at(tail.data(), tail.size(), file_size - tail_size);
  size_t end = 0;
  if (little_endian(tail.data(), 4) != kEndOfDirectory) {
    tail_size = std::min<uint64_t>(file_size, kEndOfDirectorySize + kMaxComment);
    tail.resize(tail_size);
    file.read_exact_at(tail.data(), tail.size(), file_size - tail_size);
    end = tail_size - kEndOfDirectorySize + 1;
    do {
      --end;
    } while (little_endian(&tail[end], 4) != kEndOfDirectory && end > 0);
    if (little_endian(&tail[end], 4) != kEndOfDirectory) corrupt("no end-of-central-directory record");
  }
  const uint64_t end_offset = file_size - tail_size + end;
  if (little_endian(&tail[end + 4], 4) != 0 || little_endian(&tail[end + 8], 2) != little_endian(&tail[end + 10], 2)) {
    corrupt("the end record describes a multi-disk archive");
  }
  uint64_t count = little_endian(&tail[end + 10], 2);
  uint64_t directory_size = little_endian(&tail[end + 12], 4);
  uint64_t directory_offset = little_endian(&tail[end + 16], 4);

  // Zip64 (records or archives past 4 GiB, as PyTorch writes them): a locator just before the end record.
  if (end_offset >= kZip64LocatorSize) {
    uint8_t locator[kZip64LocatorSize];
    file.read_exact_at(locator, sizeof(locator), end_offset - kZip64LocatorSize);
    if (little_endian(locator, 4) == kZip64Locator) {
      const uint64_t zip64_offset = little_endian(locator + 8, 8);
      if (zip64_offset > file_size || file_size - zip64_offset < kZip64EndOfDirectorySize) {
        corrupt(fmt::format("the zip64 end record at byte {} lies outside the file", zip64_offset));
      }
      uint8_t zip64[kZip64EndOfDirectorySize];
      file.read_exact_at(zip64, sizeof(zip64), zip64_offset);
      if (little_endian(zip64, 4) != kZip64EndOfDirectory) {
        corrupt(fmt::format("no zip64 end record at byte {}", zip64_offset));
      }
      count = little_endian(zip64 + 32, 8);
      directory_size = little_endian(zip64 + 40, 8);
      directory_offset = little_endian(zip64 + 48, 8);
    }
  }
  if (directory_offset > end_offset || directory_size > end_offset - directory_offset) {
    corrupt(fmt::format("the central directory (byte {}, {} bytes) does not lie before its end record at byte {}",
                        directory_offset, directory_size, end_offset));
  }
  if (count == 0) corrupt("the archive holds no records");
  // Each entry takes at least 46 bytes, so the count is bounded by the directory's size before anything is reserved.
  if (count > directory_size / kEntrySize) {
    corrupt(fmt::format("{} records cannot fit in a central directory of {} bytes", count, directory_size));
  }

  std::vector<uint8_t> directory(directory_size);
  file.read_exact_at(directory.data(), directory.size(), directory_offset);
  std::map<std::string, ZipRecord> records;
  std::string top;  // the first record's top folder, with its '/'
  std::set<std::string> folded_names;
  size_t at = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (directory_size - at < kEntrySize || little_endian(&directory[at], 4) != kDirectoryEntry) {
      corrupt(fmt::format("central directory entry {} at byte {} is damaged", i, directory_offset + at));
    }
    const uint8_t* e = &directory[at];
    ZipRecord record;
    record.method = static_cast<uint16_t>(little_endian(e + 10, 2));
    record.crc32 = static_cast<uint32_t>(little_endian(e + 16, 4));
    record.compressed_size = little_endian(e + 20, 4);
    record.size = little_endian(e + 24, 4);
    const size_t name_length = little_endian(e + 28, 2), extra_length = little_endian(e + 30, 2),
                 comment_length = little_endian(e + 32, 2);
    record.local_header_offset = little_endian(e + 42, 4);
    if (directory_size - at - kEntrySize < name_length + extra_length + comment_length) {
      corrupt(fmt::format("central directory entry {} runs past the directory's end", i));
    }
    const std::string full_name(reinterpret_cast<const char*>(e + kEntrySize), name_length);
    // LibTorch looks names up as C strings of at most 511 bytes (miniz's limit), and miniz hands back a directory
    // (a name ending in '/', or the MS-DOS directory attribute) as empty without reading it.
    if (name_length == 0 || name_length > 511 || full_name.find('\0') != std::string::npos) {
      corrupt(fmt::format("central directory entry {} has a name LibTorch cannot look up", i));
    }
    if (full_name.back() == '/' || (little_endian(e + 38, 4) & 0x10)) {
      corrupt(fmt::format("record '{}' is a directory", full_name));
    }
    // Zip64 extra field: the 8-byte values of the fields saturated at 0xffffffff, in this order.
    const uint8_t* extra = e + kEntrySize + name_length;
    for (size_t x = 0; x + 4 <= extra_length;) {
      const uint64_t id = little_endian(extra + x, 2), length = little_endian(extra + x + 2, 2);
      if (x + 4 + length > extra_length) break;
      if (id == 1) {
        const uint8_t* value = extra + x + 4;
        const uint8_t* value_end = value + length;
        for (uint64_t* field : {&record.size, &record.compressed_size, &record.local_header_offset}) {
          if (*field != 0xffffffff) continue;
          if (value_end - value < 8) corrupt(fmt::format("record '{}' has a short zip64 field", full_name));
          *field = little_endian(value, 8);
          value += 8;
        }
      }
      x += 4 + length;
    }
    if (record.method != 0 || record.compressed_size != record.size) {
      corrupt(
          fmt::format("record '{}' is compressed (method {}, {} bytes for {}); torch.save stores every record "
                      "as is",
                      full_name, record.method, record.compressed_size, record.size));
    }
    if (little_endian(e + 8, 2) & kUnreadableFlags) {
      corrupt(fmt::format("record '{}' is encrypted or patched (flags {:#06x})", full_name, little_endian(e + 8, 2)));
    }
    if (little_endian(e + 34, 2) != 0) corrupt(fmt::format("record '{}' lies on another disk", full_name));
    // The local header too (LibTorch's reader checks it only as it reads the record, and leaks its state when that
    // fails while it opens the archive): its signature, and the record's bytes after it, before the directory.
    uint8_t local[kLocalHeaderSize];
    if (record.local_header_offset > directory_offset ||
        directory_offset - record.local_header_offset < kLocalHeaderSize) {
      corrupt(fmt::format("record '{}' has its local header at byte {}, not before the central directory", full_name,
                          record.local_header_offset));
    }
    file.read_exact_at(local, sizeof(local), record.local_header_offset);
    const uint64_t data_offset =
        record.local_header_offset + kLocalHeaderSize + little_endian(local + 26, 2) + little_endian(local + 28, 2);
    if (little_endian(local, 4) != kLocalHeader) {
      corrupt(fmt::format("record '{}' has no local header at byte {}", full_name, record.local_header_offset));
    }
    if (data_offset > directory_offset || record.size > directory_offset - data_offset) {
      corrupt(fmt::format("record '{}' ({} bytes at byte {}) does not lie before the central directory", full_name,
                          record.size, data_offset));
    }
    record.data_offset = data_offset;
    // LibTorch reads records below the first one's top folder: a record outside it would be missing to LibTorch but
    // not to the checks here, and two names that agree below it would let the CRC checked be another record's.
    const size_t slash = full_name.find('/');
    if (slash == std::string::npos) corrupt(fmt::format("record '{}' is not inside a top folder", full_name));
    if (i == 0) top = full_name.substr(0, slash + 1);
    if (full_name.compare(0, top.size(), top) != 0) {
      corrupt(fmt::format("record '{}' is outside the archive's top folder '{}'", full_name, top));
    }
    const std::string name = full_name.substr(slash + 1);
    // miniz finds names regardless of ASCII case: two that differ only by case would let LibTorch read another
    // record than the one checked here.
    std::string folded = name;
    std::transform(folded.begin(), folded.end(), folded.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!folded_names.insert(folded).second || !records.emplace(name, record).second) {
      corrupt(fmt::format("record '{}' appears twice (names are compared regardless of case)", name));
    }
    at += kEntrySize + name_length + extra_length + comment_length;
  }
  return records;
}

void check_zip_record(const std::string& label, const std::string& name, const ZipRecord& record, const void* data,
                      size_t size) {
  const uint32_t crc = crc32_of(data, size);
  if (record.size != size || crc != record.crc32) {
    throw Error(ErrorCode::kCorruptCheckpoint,
                fmt::format("'{}': record '{}' fails its CRC-32 check (the directory says {:08x} over {} bytes; the "
                            "record gives {:08x} over {}): the archive is damaged",
                            label, name, record.crc32, record.size, crc, size));
  }
}

std::string read_zip_record(const File& file, const std::string& name, const ZipRecord& record) {
  std::string bytes(record.size, '\0');
  file.read_exact_at(bytes.data(), bytes.size(), record.data_offset);
  check_zip_record(file.path().string(), name, record, bytes.data(), bytes.size());
  return bytes;
}

uint32_t crc32_of(const void* data, size_t size) {
  const auto* bytes = static_cast<const Bytef*>(data);
  uLong crc = crc32(0L, Z_NULL, 0);
  while (size > 0) {  // zlib takes 32-bit lengths
    const uInt piece = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = crc32(crc, bytes, piece);
    bytes += piece;
    size -= piece;
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace shardcast
