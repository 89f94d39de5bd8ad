// libFuzzer target: a whole torch.save zip archive (pytorch_model.bin): zip directory, CRC-32s, pickle, storages.
// Mutations rarely keep the CRCs right, so this one mostly reaches the zip directory; fuzz_pickle reaches the pickle.
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shardcast::fuzz::verify(shardcast::fuzz::write_input("pytorch_model.bin", data, size));
  return 0;
}
