// The shardcast binary as a user runs it: exit codes (0 sound, 1 problem, 2 usage), messages, never a signal.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "shardcast/config.h"
#include "tests/support/run_command.h"
#include "tests/support/safetensors_bytes.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::run_cli;
using testing::run_command;
using testing::TempDir;

std::string describe(const CommandResult& r) {
  return "exit " + std::to_string(r.exit_code) + (r.signaled ? " signal " + std::to_string(r.signal) : "") +
         "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

CommandResult ok(const std::vector<std::string>& args) {
  CommandResult r = run_cli(args);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  return r;
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run_cli({}).exit_code, 2);
  EXPECT_EQ(run_cli({"inspect"}).exit_code, 2);
  EXPECT_EQ(run_cli({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(run_cli({"synth", "/tmp/x", "--format", "onnx"}).exit_code, 2);
}

TEST(Cli, BadOptionValueExitsOneWithAClearMessage) {
  TempDir dir;
  CommandResult r = run_cli({"synth", (dir / "s").string(), "--size", "12XB"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "shardcast: error: size '12XB'");
}

TEST(Cli, VerifyAcceptsASoundCheckpoint) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "3MB", "--max-shard-size", "1MB"});
  CommandResult r = ok({"verify", (dir / "ckpt").string()});
  EXPECT_CONTAINS(r.out, "ok: 4 shards");
  EXPECT_TRUE(r.err.empty()) << r.err;
}

TEST(Cli, VerifyRejectsEveryBrokenFileWithExitOneNeverASignal) {
  TempDir dir;
  for (const auto& c : testing::broken_safetensors_cases()) {
    const fs::path path = dir / (c.name + ".safetensors");
    testing::write_file(path, c.bytes);
    CommandResult r = run_cli({"verify", path.string()});
    EXPECT_FALSE(r.signaled) << c.name << ": " << describe(r);
    EXPECT_EQ(r.exit_code, 1) << c.name << ": " << describe(r);
    EXPECT_CONTAINS(r.err, c.expected);
    EXPECT_CONTAINS(r.out, "FAILED: 1 problem(s)");
  }
}

TEST(Cli, VerifyListsEveryProblem) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "3MB", "--max-shard-size", "1MB"});
  testing::write_file(dir / "ckpt" / "model-00002-of-00004.safetensors", "short");
  std::string index = testing::read_file(dir / "ckpt" / "model.safetensors.index.json");
  auto json = nlohmann::json::parse(index);
  json["weight_map"]["ghost.weight"] = "model-00001-of-00004.safetensors";
  testing::write_file(dir / "ckpt" / "model.safetensors.index.json", json.dump());
  CommandResult r = run_cli({"verify", (dir / "ckpt").string()});
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_CONTAINS(r.err, "reading shard 2/4 'model-00002-of-00004.safetensors'");
  EXPECT_CONTAINS(r.err, "maps tensor 'ghost.weight'");
  EXPECT_CONTAINS(r.out, "FAILED: 2 problem(s)");
}

TEST(Cli, VerifyReadsEveryByteAndCatchesBadBoolValues) {
  TempDir dir;
  // BOOL [2] holding 0 and 7: structurally sound, only a full read finds it.
  testing::write_file(dir / "model.safetensors",
                      testing::safetensors_bytes(R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
                                                 std::string("\x00\x07", 2)));
  CommandResult r = run_cli({"verify", dir.path().string()});
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_CONTAINS(r.err, "BOOL tensor 'm' holds byte value 7 at element 1");
}

TEST(Cli, InspectJsonDescribesShardsDtypesAndSizes) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "2MB", "--max-shard-size", "800kB"});
  auto j = nlohmann::json::parse(ok({"inspect", (dir / "ckpt").string(), "--json"}).out);
  EXPECT_EQ(j["format"], "safetensors");
  EXPECT_EQ(j["tensor_bytes"], 2'000'000);
  EXPECT_EQ(j["shards"].size(), 3u);
  EXPECT_EQ(j["dtypes"].size(), 15u);
  EXPECT_EQ(j["metadata"]["format"], "pt");
  EXPECT_LE(j["largest_shard"]["bytes"].get<uint64_t>(), 800'000u + 16'000u);
  std::string text = ok({"inspect", (dir / "ckpt").string()}).out;
  EXPECT_CONTAINS(text, "2.00 MB");
  EXPECT_CONTAINS(text, "BF16");
}

TEST(Cli, DigestLinesHaveTheDocumentedFormatAndOutFileMatchesStdout) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "1MB"});
  std::string out = ok({"digest", (dir / "ckpt").string()}).out;
  ok({"digest", (dir / "ckpt").string(), "--out", (dir / "d.txt").string()});
  EXPECT_EQ(testing::read_file(dir / "d.txt"), out);
  std::istringstream lines(out);
  std::string line, previous;
  const std::regex format(R"(^[^\t]+\t[A-Z0-9_]+\t\[(\d+(,\d+)*)?\]\t[0-9a-f]{64}$)");
  size_t count = 0;
  while (std::getline(lines, line)) {
    EXPECT_TRUE(std::regex_match(line, format)) << line;
    EXPECT_LT(previous, line);
    previous = line;
    ++count;
  }
  EXPECT_GT(count, 20u);
  EXPECT_CONTAINS(out, "model.rope_theta\tF64\t[]\t");
}

TEST(Cli, ConvertOutputVerifiesAndRoundTripsBitExact) {
  TempDir dir;
  ok({"synth", (dir / "src").string(), "--size", "3MB"});
  ok({"convert", (dir / "src").string(), (dir / "one").string(), "--max-shard-size", "1GB"});
  EXPECT_TRUE(fs::exists(dir / "one" / "model.safetensors"));
  ok({"convert", (dir / "one").string(), (dir / "many").string(), "--max-shard-size", "500kB"});
  ok({"verify", (dir / "many").string()});
  EXPECT_EQ(ok({"digest", (dir / "src").string()}).out, ok({"digest", (dir / "many").string()}).out);
}

TEST(Cli, ConvertRefusesToOverwrite) {
  TempDir dir;
  ok({"synth", (dir / "src").string(), "--size", "1MB"});
  CommandResult r = run_cli({"convert", (dir / "src").string(), (dir / "src").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "is not empty");
}

TEST(Cli, WrittenSafetensorsReadBackInAnIndependentReader) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "2MB"});
  CommandResult py =
      run_command({SHARDCAST_PYTHON, std::string(SHARDCAST_SOURCE_DIR) + "/tests/fixtures/safetensors_digest.py",
                   (dir / "ckpt").string()});
  ASSERT_EQ(py.exit_code, 0) << describe(py);
  EXPECT_EQ(py.out, ok({"digest", (dir / "ckpt").string()}).out);
}

TEST(Cli, DigestOfATorchBinMatchesPyTorch) {
  const fs::path fixtures = SHARDCAST_FIXTURES_DIR;
  for (const char* name : {"all_cases", "sharded"}) {
    CommandResult r = ok({"digest", (fixtures / name).string()});
    EXPECT_EQ(r.out, testing::read_file(fixtures / name / "expected.digest")) << name;
  }
}

TEST(Cli, ConvertedTorchBinVerifiesAndKeepsEveryDigest) {
  TempDir dir;
  const fs::path fixtures = SHARDCAST_FIXTURES_DIR;
  CommandResult r =
      ok({"convert", (fixtures / "all_cases").string(), (dir / "st").string(), "--max-shard-size", "1kB"});
  EXPECT_CONTAINS(r.out, "tied weight(s) stored as separate copies");
  ok({"verify", (dir / "st").string()});
  EXPECT_EQ(ok({"digest", (dir / "st").string()}).out, testing::read_file(fixtures / "all_cases" / "expected.digest"));
}

TEST(Cli, MalformedTorchBinsFailCleanly) {
  const fs::path fixtures = SHARDCAST_FIXTURES_DIR;
  for (const char* name : {"legacy", "malicious", "nested", "complex", "truncated"}) {
    CommandResult r = run_cli({"verify", (fixtures / name).string()});
    EXPECT_FALSE(r.signaled) << name << ": " << describe(r);
    EXPECT_EQ(r.exit_code, 1) << name << ": " << describe(r);
    EXPECT_CONTAINS(r.err, "pytorch_model.bin");
  }
  EXPECT_FALSE(fs::exists(fixtures / "pwned"));
}

}  // namespace
}  // namespace shardcast

namespace shardcast {
namespace {

TEST(Cli, PlacementCudaWithoutAGpuSaysWhyAndTheStandInLoadsBitExact) {
  TempDir dir;
  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "4MB", "--dtypes", "torch"});
  CommandResult r = run_cli({"load", ckpt, "--placement", "cuda"});
  if (r.exit_code == 0) GTEST_SKIP() << "this machine has a usable GPU";
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(std::regex_search(r.err, std::regex("shardcast: error: (no cuda:0 on this host|placement cuda needs a "
                                                  "build with CUDA|the LibTorch this shardcast links has no CUDA)")))
      << r.err;

  ok({"load", ckpt, "--placement", "cuda", "--device-stand-in", "--ring", "3x256KiB", "--digest-out",
      (dir / "digest").string(), "--report-out", (dir / "report.json").string()});
  EXPECT_EQ(testing::read_file(dir / "digest"), ok({"digest", ckpt}).out);
  auto report = nlohmann::json::parse(testing::read_file(dir / "report.json"));
  EXPECT_EQ(report["ring_bytes"], 3 * 256 * 1024);
  EXPECT_EQ(report["rank_bytes_to_device"], 4'000'000);

  r = run_cli({"load", ckpt, "--placement", "cuda", "--device-stand-in", "--ring", "2by1MB"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "--ring '2by1MB' is not SLOTSxSIZE");
}

// `info` names the communicators this build has; a build without MPI refuses a rank that mpirun started rather than
// loading alone as a job of one.
TEST(Cli, InfoNamesTheCommunicatorsAndABuildWithoutMpiRefusesMpirunRanks) {
  CommandResult info = ok({"info"});
  EXPECT_CONTAINS(info.out, "comms      ");
  EXPECT_EQ(info.out.find("comms      mpi, store") != std::string::npos, SHARDCAST_HAVE_MPI == 1) << info.out;
  if (SHARDCAST_HAVE_MPI) return;
  TempDir dir;
  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "1MB", "--dtypes", "torch"});
  CommandResult r =
      run_command({"/usr/bin/env", "OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_LOCAL_RANK=0",
                   "OMPI_COMM_WORLD_LOCAL_SIZE=2", SHARDCAST_CLI_PATH, "load", ckpt});
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_CONTAINS(r.err, "this shardcast was built without MPI");
}

}  // namespace
}  // namespace shardcast
