#include "tests/fuzz/fuzz_input.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <system_error>

#include "coordinator/verify.h"

namespace shardcast::fuzz {
namespace {

struct Dir {
  std::filesystem::path path;
  Dir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/fuzzed-checkpoint-XXXXXX";
    if (!mkdtemp(pattern.data())) {
      std::perror("shardcast fuzz: mkdtemp");
      std::abort();
    }
    path = pattern;
  }
  ~Dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace

const std::filesystem::path& checkpoint_dir() {
  static Dir dir;
  return dir.path;
}

std::filesystem::path write_input(std::string_view name, const uint8_t* data, size_t size) {
  std::filesystem::path path = checkpoint_dir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) {
    std::fprintf(stderr, "shardcast fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

void verify(const std::filesystem::path& path) {
  VerifyReport report = verify_checkpoint(path);
  if (std::getenv("SHARDCAST_FUZZ_PRINT")) {
    for (const std::string& p : report.problems) std::fprintf(stderr, "problem: %s\n", p.c_str());
    if (report.problems.empty()) std::fprintf(stderr, "ok: %zu tensors\n", report.tensors);
  }
}

}  // namespace shardcast::fuzz
