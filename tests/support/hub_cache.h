// A Hugging Face hub cache laid out as huggingface_hub writes it: <cache>/models--org--name/ with blobs/<sha256>
// holding the bytes, snapshots/<rev>/<file> symlinks to ../../blobs/<sha256>, and refs/main naming <rev>.
#pragma once

#include <filesystem>
#include <string>

namespace shardcast::testing {

// Moves every file of `checkpoint` (a flat directory) into the cache as repo `repo` ("models--org--name") and returns
// the snapshot directory; `checkpoint` is left empty.
std::filesystem::path move_into_hub_cache(const std::filesystem::path& checkpoint, const std::filesystem::path& cache,
                                          const std::string& repo);

}  // namespace shardcast::testing
