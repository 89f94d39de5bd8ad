#include "coordinator/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "coordinator/json_strict.h"
#include "coordinator/tensor_data.h"
#include "core/error.h"
#include "core/file.h"

namespace shardcast {
namespace {

using nlohmann::json;

[[noreturn]] void corrupt(const std::string& label, const std::string& what) {
  throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': {}", label, what));
}

SafetensorsEntry parse_entry(const std::string& name, const json& value, const std::string& label) {
  auto bad = [&](const std::string& what) { corrupt(label, fmt::format("tensor '{}': {}", name, what)); };
  if (!value.is_object()) bad("entry is not a JSON object");
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(field)) bad(fmt::format("missing field '{}'", field));
  }
  SafetensorsEntry entry;
  entry.name = name;

  const json& dtype = value["dtype"];
  if (!dtype.is_string()) bad("dtype is not a string");
  auto parsed_dtype = dtype_from_safetensors_name(dtype.get<std::string>());
  if (!parsed_dtype) bad(fmt::format("unknown dtype '{}'", dtype.get<std::string>()));
  entry.dtype = *parsed_dtype;

  const json& shape = value["shape"];
  if (!shape.is_array()) bad("shape is not a list");
  for (const json& dim : shape) {
    if (!dim.is_number_unsigned() || dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      bad(fmt::format("shape {} has a dimension that is not a non-negative integer", shape.dump()));
    }
    entry.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
  }

  const json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    bad(fmt::format("data_offsets {} is not a list of two non-negative integers", offsets.dump()));
  }
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  if (entry.begin > entry.end) bad(fmt::format("data_offsets [{}, {}] begin after end", entry.begin, entry.end));

  uint64_t numel = 0;
  if (!checked_numel(entry.shape, &numel) || numel > std::numeric_limits<uint64_t>::max() / dtype_size(entry.dtype)) {
    bad(fmt::format("shape {} overflows 64 bits", shape_string(entry.shape)));
  }
  uint64_t nbytes = numel * dtype_size(entry.dtype);
  if (entry.end - entry.begin != nbytes) {
    bad(fmt::format("data_offsets [{}, {}] hold {} bytes but {}{} needs {} ({} elements x {} bytes)", entry.begin,
                    entry.end, entry.end - entry.begin, dtype_name(entry.dtype), shape_string(entry.shape), nbytes,
                    numel, dtype_size(entry.dtype)));
  }
  return entry;
}

}  // namespace

bool checked_numel(const std::vector<int64_t>& shape, uint64_t* numel) {
  uint64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    auto d = static_cast<uint64_t>(dim);
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / d) return false;
    n *= d;
  }
  *numel = n;
  return true;
}

SafetensorsHeader parse_safetensors_header(std::string_view text, uint64_t data_size, const std::string& label) {
  if (text.empty() || text.front() != '{') corrupt(label, "header does not start with '{'");
  json root = parse_json_strict(text, label, "header");
  if (!root.is_object()) corrupt(label, "header is not a JSON object");

  SafetensorsHeader header;
  header.data_size = data_size;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it.value().is_null()) continue;  // the reference reader takes null as no metadata
      if (!it.value().is_object()) corrupt(label, "__metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) corrupt(label, fmt::format("__metadata__ value of '{}' is not a string", m.key()));
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    header.tensors.push_back(parse_entry(it.key(), it.value(), label));
  }

  // Header order may differ from data order; the data itself must be one contiguous run from 0 to data_size.
  std::sort(header.tensors.begin(), header.tensors.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t expected = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& entry : header.tensors) {
    if (entry.begin != expected) {
      std::string after = previous ? fmt::format("tensor '{}' ends at {}", previous->name, expected)
                                   : std::string("the data section starts at 0");
      corrupt(label, fmt::format("tensor '{}': data starts at byte {} but {}: {} of {} bytes", entry.name, entry.begin,
                                 after, entry.begin < expected ? "overlap" : "gap",
                                 entry.begin < expected ? expected - entry.begin : entry.begin - expected));
    }
    expected = entry.end;
    previous = &entry;
  }
  if (expected != data_size) {
    if (expected > data_size) {
      corrupt(label, fmt::format("tensor '{}': data ends at byte {} of the data section but the file holds {}",
                                 previous->name, expected, data_size));
    }
    corrupt(label, fmt::format("tensors end at byte {} of the data section but it holds {}: {} trailing bytes",
                               expected, data_size, data_size - expected));
  }
  return header;
}

SafetensorsHeader read_safetensors_header(const File& file) {
  const std::string label = file.path().string();
  const uint64_t file_size = file.size();
  if (file_size < 8) corrupt(label, fmt::format("file is {} bytes, too short for the 8-byte header length", file_size));
  unsigned char prefix[8];
  file.read_exact_at(prefix, 8, 0);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | prefix[i];
  if (header_size > kSafetensorsMaxHeaderSize) {
    corrupt(label, fmt::format("header length {} exceeds the {}-byte limit", header_size, kSafetensorsMaxHeaderSize));
  }
  if (header_size > file_size - 8) {
    corrupt(label, fmt::format("header length {} runs past the end of the file ({} bytes)", header_size, file_size));
  }
  std::string text(header_size, '\0');
  file.read_exact_at(text.data(), text.size(), 8);
  SafetensorsHeader header = parse_safetensors_header(text, file_size - 8 - header_size, label);
  header.data_start = 8 + header_size;
  return header;
}

std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& tensors,
                                      const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps __metadata__ first and tensors in data order, as the reference writer does.
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata.empty()) root["__metadata__"] = metadata;
  for (const SafetensorsEntry& t : tensors) {
    root[t.name] = {
        {"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string text = root.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace shardcast
