// Builds safetensors files byte by byte, and the catalogue of deliberately broken ones (one named case per defect,
// after llama.cpp's test-gguf): shared by the reader's unit tests and the CLI's exit-code tests.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace shardcast::testing {

// 8-byte little-endian length of `header`, `header`, then `data`.
std::string safetensors_bytes(const std::string& header, const std::string& data);
std::string safetensors_bytes_with_length(uint64_t declared_length, const std::string& header, const std::string& data);
// The same with `header` padded with spaces so the data starts at a multiple of 8, as safetensors writes it: tensor
// offsets in the file are then as aligned as their data offsets.
std::string padded_safetensors_bytes(std::string header, const std::string& data);

// A sound two-tensor file: "a" F32 [2] at [0,8) and "b" I16 [3] at [8,14), bytes 0..13.
std::string sound_safetensors();

struct BrokenCase {
  std::string name;      // the defect, used as the test name
  std::string bytes;     // the whole file
  std::string expected;  // a phrase the error message must contain
  std::string tensor;    // the tensor the message must name, or empty
};

std::vector<BrokenCase> broken_safetensors_cases();

// gtest prints the case by name, not as a byte dump.
inline void PrintTo(const BrokenCase& c, std::ostream* os) {
  *os << c.name;
}

}  // namespace shardcast::testing
