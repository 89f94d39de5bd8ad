// libFuzzer target: the input is the data.pkl of a torch.save archive whose other records are sound (storages
// data/0 .. data/7 of 256 zero bytes, correct CRCs), so every mutation reaches the pickle pre-check and, when it
// passes, LibTorch's unpickler and the storage and view checks: what a hostile pickle can reach.
#include <string>
#include <vector>

#include <caffe2/serialize/inline_container.h>

#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<char> archive;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* bytes, size_t n) {
      archive.insert(archive.end(), static_cast<const char*>(bytes), static_cast<const char*>(bytes) + n);
      return n;
    });
    writer.writeRecord("data.pkl", data, size);
    const std::string storage(256, '\0');
    for (int key = 0; key < 8; ++key) {
      writer.writeRecord("data/" + std::to_string(key), storage.data(), storage.size());
    }
    writer.writeEndOfFile();
  }
  shardcast::fuzz::verify(shardcast::fuzz::write_input(
      "pytorch_model.bin", reinterpret_cast<const uint8_t*>(archive.data()), archive.size()));
  return 0;
}
