// What every fuzz target shares: the input becomes a file of a checkpoint directory, and the whole of
// `shardcast verify` (catalog, headers, index, .bin decoding, CRCs, every byte read) runs on it. verify never throws
// for a bad checkpoint, so anything libFuzzer catches (a signal, a sanitizer report, a hang, an allocation out of
// proportion) is a defect.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

namespace shardcast::fuzz {

// This process's checkpoint directory (created on first use, removed at exit).
const std::filesystem::path& checkpoint_dir();

// Replaces `name` in checkpoint_dir() with these bytes and returns its path.
std::filesystem::path write_input(std::string_view name, const uint8_t* data, size_t size);

// Runs verify on `path`. With SHARDCAST_FUZZ_PRINT set, prints its problems (to see what a seed exercises).
void verify(const std::filesystem::path& path);

}  // namespace shardcast::fuzz
