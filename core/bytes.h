// A read-only byte range that may keep its owner alive (a buffer, a mapping, a decoded torch storage).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace shardcast {

struct Bytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::shared_ptr<const void> owner;  // empty when the caller guarantees the memory outlives this view

  static Bytes from_vector(std::vector<uint8_t> buffer) {
    auto owned = std::make_shared<const std::vector<uint8_t>>(std::move(buffer));
    return Bytes{owned->data(), owned->size(), owned};
  }
};

}  // namespace shardcast
