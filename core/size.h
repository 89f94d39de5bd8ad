// Byte sizes as users write them ("200MB", "5GiB") and as shardcast prints them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shardcast {

// transformers' meaning (convert_file_size_to_int): a plain integer is bytes; KB/MB/GB/TB are powers of 10,
// KiB/MiB/GiB/TiB powers of 2 (case-insensitive); a lowercase final 'b' on a decimal unit ("5Gb") means bits. Throws
// kInvalidArgument naming the text on anything else or on overflow.
uint64_t parse_size(std::string_view text);

// "1.50 GB" style (decimal units, as max_shard_size is usually written), "512 B" below 1 kB.
std::string format_size(uint64_t bytes);

}  // namespace shardcast
