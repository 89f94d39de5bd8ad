#include "tests/support/safetensors_bytes.h"

namespace shardcast::testing {

std::string safetensors_bytes_with_length(uint64_t declared_length, const std::string& header,
                                          const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((declared_length >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return safetensors_bytes_with_length(header.size(), header, data);
}

std::string padded_safetensors_bytes(std::string header, const std::string& data) {
  header.append((8 - (8 + header.size()) % 8) % 8, ' ');
  return safetensors_bytes(header, data);
}

namespace {

std::string data_bytes(size_t n) {
  std::string data(n, '\0');
  for (size_t i = 0; i < n; ++i) data[i] = static_cast<char>(i);
  return data;
}

const char* kA = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
const char* kB = R"("b":{"dtype":"I16","shape":[3],"data_offsets":[8,14]})";

std::string header_with(const std::string& a_entry) {
  return "{" + a_entry + "," + kB + "}";
}

}  // namespace

std::string sound_safetensors() {
  return safetensors_bytes(std::string("{") + kA + "," + kB + "}", data_bytes(14));
}

std::vector<BrokenCase> broken_safetensors_cases() {
  const std::string d14 = data_bytes(14);
  auto with_a = [&](const std::string& a_entry) { return safetensors_bytes(header_with(a_entry), d14); };
  return {
      {"FileShorterThanLengthPrefix", "\x05\x00\x00", "too short for the 8-byte header length", ""},
      {"HeaderLengthOverCap", safetensors_bytes_with_length(100'000'001, "{}", ""), "exceeds the 100000000-byte limit",
       ""},
      {"HeaderLengthPastEndOfFile", safetensors_bytes_with_length(4096, "{}", ""), "runs past the end of the file", ""},
      {"HeaderNotStartingWithBrace", safetensors_bytes(" {}", ""), "does not start with '{'", ""},
      {"HeaderInvalidJson", safetensors_bytes(R"({"a":{"dtype":"F32",)", ""), "header is not valid JSON", ""},
      {"HeaderTrailingGarbage", safetensors_bytes("{}xyz", ""), "header is not valid JSON", ""},
      {"HeaderInvalidUtf8", safetensors_bytes("{\"\xff\xfe\":1}", ""), "header is not valid JSON", ""},
      {"HeaderNestedTooDeep",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":)" + std::string(100000, '[') + std::string(100000, ']') +
                             R"(,"data_offsets":[0,0]}})",
                         ""),
       "header nests deeper than 16 levels", ""},
      // An object past the depth limit once crashed the depth check (issue 13).
      {"HeaderNestedTooDeepAroundAnObject",
       safetensors_bytes(R"({"a":)" + std::string(16, '[') + R"({"a":1})" + std::string(16, ']') + "}", ""),
       "header nests deeper than 16 levels", ""},
      // nlohmann stops at a NUL as at the end of its input: what follows must not slip through.
      {"HeaderNulThenGarbage", safetensors_bytes(header_with(kA) + std::string("\0THIS IS NOT JSON", 17), d14),
       "header has a NUL byte at byte", ""},
      {"HeaderPaddedWithNuls", safetensors_bytes(header_with(kA) + std::string(6, '\0'), d14),
       "header has a NUL byte at byte", ""},
      {"ShapeNumberOverflow", with_a(R"("a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,8]})"), "number overflow",
       ""},
      {"HeaderDuplicateKey", safetensors_bytes(std::string("{") + kA + "," + kA + "," + kB + "}", d14),
       "has the key 'a' more than once", ""},
      {"MetadataNotObject", safetensors_bytes(std::string(R"({"__metadata__":[1],)") + kA + "," + kB + "}", d14),
       "__metadata__ is not a JSON object", ""},
      {"MetadataValueNotString",
       safetensors_bytes(std::string(R"({"__metadata__":{"format":1},)") + kA + "," + kB + "}", d14),
       "__metadata__ value of 'format' is not a string", ""},
      {"EntryNotObject", with_a(R"("a":[1,2])"), "entry is not a JSON object", "a"},
      {"MissingDtype", with_a(R"("a":{"shape":[2],"data_offsets":[0,8]})"), "missing field 'dtype'", "a"},
      {"MissingShape", with_a(R"("a":{"dtype":"F32","data_offsets":[0,8]})"), "missing field 'shape'", "a"},
      {"MissingDataOffsets", with_a(R"("a":{"dtype":"F32","shape":[2]})"), "missing field 'data_offsets'", "a"},
      {"DtypeNotString", with_a(R"("a":{"dtype":4,"shape":[2],"data_offsets":[0,8]})"), "dtype is not a string", "a"},
      {"UnknownDtype", with_a(R"("a":{"dtype":"F128","shape":[2],"data_offsets":[0,8]})"), "unknown dtype 'F128'", "a"},
      {"LowercaseDtype", with_a(R"("a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]})"), "unknown dtype 'f32'", "a"},
      {"ShapeNotList", with_a(R"("a":{"dtype":"F32","shape":2,"data_offsets":[0,8]})"), "shape is not a list", "a"},
      {"ShapeNegative", with_a(R"("a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"),
       "not a non-negative integer", "a"},
      {"ShapeFloat", with_a(R"("a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), "not a non-negative integer",
       "a"},
      {"ShapeOverflow", with_a(R"("a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"),
       "overflows 64 bits", "a"},
      {"ShapeOverflowInBytes", with_a(R"("a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]})"),
       "overflows 64 bits", "a"},
      {"DataOffsetsNotPair", with_a(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0]})"),
       "is not a list of two non-negative integers", "a"},
      {"DataOffsetsNegative", with_a(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"),
       "is not a list of two non-negative integers", "a"},
      {"DataOffsetsBeginAfterEnd", with_a(R"("a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), "begin after end",
       "a"},
      {"ByteCountDisagreesWithShape", with_a(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"),
       "hold 8 bytes but F32[3] needs 12", "a"},
      {"GapBeforeFirstTensor",
       safetensors_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},"b":{"dtype":"I16","shape":[2],"data_offsets":[10,14]}})",
           d14),
       "gap of 2 bytes", "a"},
      {"GapBetweenTensors",
       safetensors_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I16","shape":[2],"data_offsets":[10,14]}})",
           d14),
       "gap of 2 bytes", "b"},
      {"OverlappingTensors",
       safetensors_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I16","shape":[4],"data_offsets":[6,14]}})",
           d14),
       "overlap of 2 bytes", "b"},
      {"TrailingBytesAfterLastTensor", safetensors_bytes(header_with(kA), d14 + "xx"), "2 trailing bytes", ""},
      {"DataRunsPastEndOfFile", safetensors_bytes(header_with(kA), d14.substr(0, 12)),
       "data ends at byte 14 of the data section but the file holds 12", "b"},
  };
}

}  // namespace shardcast::testing
