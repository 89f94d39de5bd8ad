// libFuzzer target: a .safetensors file (length prefix, JSON header, data section), verified as a single-file
// checkpoint.
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shardcast::fuzz::verify(shardcast::fuzz::write_input("model.safetensors", data, size));
  return 0;
}
