// SHA-256 over streamed bytes (OpenSSL's libcrypto), printed as lowercase hex.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace shardcast {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void update(const void* data, size_t size);
  std::string hex_digest();  // finishes the hash; call once

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string sha256_hex(const void* data, size_t size);

}  // namespace shardcast
