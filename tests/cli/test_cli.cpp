// The shardcast binary as a user runs it: exit codes (0 sound, 1 problem, 2 usage), messages, never a signal.
#include <gtest/gtest.h>

#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/size.h"
#include "shardcast/config.h"
#include "shm/kept_copies.h"
#include "tests/support/hub_cache.h"
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

// A malformed option value is a usage error: exit 2 while parsing, before any work, with the option named.
TEST(Cli, BadOptionValueExitsTwoNamingTheOption) {
  TempDir dir;
  CommandResult r = run_cli({"synth", (dir / "s").string(), "--size", "12XB"});
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_CONTAINS(r.err, "--size: size '12XB'");
  EXPECT_FALSE(fs::exists(dir / "s"));

  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "1MB", "--dtypes", "torch"});
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"load", ckpt, "--dtype", "f17"}, "--dtype: unknown dtype 'f17'"},
      {{"load", ckpt, "--tp-size", "2", "--tp-rule", "*.weight"}, "--tp-rule: tensor-parallel rule '*.weight'"},
      {{"load", ckpt, "--shm-dir", (dir / "nowhere").string()}, "--shm-dir: Directory does not exist"},
      {{"gc", "--dry-run", "--shm-dir", (dir / "nowhere").string()}, "--shm-dir: Directory does not exist"},
      {{"convert", ckpt, (dir / "out").string(), "--dtype", "f17"}, "--dtype: unknown dtype 'f17'"},
  };
  for (const auto& [args, message] : cases) {
    r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[2] << ": " << describe(r);
    EXPECT_CONTAINS(r.err, message);
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

// Timeouts, counts, sizes and device indices are refused at once when not positive (or negative, for indices),
// in a message that names the option and fits on a line: not a 300-digit range, not a timeout blamed on a healthy
// rank later.
TEST(Cli, NonPositiveTimeoutsCountsAndSizesExitTwoNamingTheOption) {
  TempDir dir;
  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "1MB", "--dtypes", "torch"});
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"load", ckpt, "--timeout", "0"}, "--timeout: must be at least 1, not 0"},
      {{"load", ckpt, "--timeout", "-5"}, "--timeout: must be at least 1, not -5"},
      {{"load", ckpt, "--timeout", "1.5"}, "--timeout: '1.5' is not a whole number"},
      {{"info", "--join", "--timeout", "0"}, "--timeout: must be at least 1, not 0"},
      {{"load", ckpt, "--tp-size", "0"}, "--tp-size: must be at least 1, not 0"},
      {{"load", ckpt, "--placement", "cuda", "--device-stand-in", "--device", "-3"}, "--device: must be at least 0"},
      {{"load", ckpt, "--placement", "cuda", "--device-stand-in", "--ring", "0x1MB"},
       "--ring: '0x1MB': the ring needs"},
      {{"load", ckpt, "--placement", "cuda", "--device-stand-in", "--ring", "2x0"}, "--ring: '2x0': the ring needs"},
      {{"convert", ckpt, (dir / "out").string(), "--max-shard-size", "0"}, "--max-shard-size: must be at least 1"},
      {{"synth", (dir / "s").string(), "--size", "0"}, "--size: must be at least 1"},
      {{"synth", (dir / "s").string(), "--max-shard-size", "0"}, "--max-shard-size: must be at least 1"},
  };
  for (const auto& [args, message] : cases) {
    CommandResult r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[2] << ": " << describe(r);
    EXPECT_CONTAINS(r.err, message);
    EXPECT_LT(r.err.find('\n'), 120u) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  EXPECT_FALSE(fs::exists(dir / "s"));
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// An output file that cannot be written is found before the load (which may take minutes), naming option and path;
// `{rank}` is expanded as the load will expand it.
TEST(Cli, PlanPrintsTheDeviceMapWithoutLoadingAsATableAndJson) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "2MB", "--dtypes", "torch"});
  const CommandResult table = ok({"plan", (dir / "ckpt").string(), "--device-map", "auto", "--max-memory", "cpu=1MB"});
  EXPECT_CONTAINS(table.out, "device_map for");
  EXPECT_CONTAINS(table.out, "1.00 MB");    // the cpu budget
  EXPECT_CONTAINS(table.out, "unbounded");  // disk
  const auto plan = nlohmann::json::parse(
      ok({"plan", (dir / "ckpt").string(), "--device-map", "auto", "--max-memory", "cpu=1MB", "--json"}).out);
  EXPECT_LE(plan["device_bytes"]["cpu"].get<uint64_t>(), 1'000'000u);
  EXPECT_EQ(plan["device_bytes"]["cpu"].get<uint64_t>() + plan["device_bytes"]["disk"].get<uint64_t>(),
            plan["tensor_bytes"].get<uint64_t>());
  EXPECT_EQ(plan["budgets"]["disk"], nullptr);
  // Nothing fits: exit 1 with the numbers; a bad map or budget: exit 2 naming the option.
  const CommandResult none =
      run_cli({"plan", (dir / "ckpt").string(), "--device-map", "auto", "--max-memory", "cpu=1KB,disk=0"});
  EXPECT_EQ(none.exit_code, 1) << describe(none);
  EXPECT_CONTAINS(none.err, "fits on no device");
  EXPECT_EQ(run_cli({"plan", (dir / "ckpt").string(), "--device-map", "model=gpu"}).exit_code, 2);
  EXPECT_EQ(run_cli({"plan", (dir / "ckpt").string(), "--device-map", "auto", "--max-memory", "cpu"}).exit_code, 2);
}

TEST(Cli, UnwritableOutputFilesExitTwoBeforeLoading) {
  TempDir dir;
  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "1MB", "--dtypes", "torch"});
  const std::string missing = (dir / "missing").string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"load", ckpt, "--digest-out", missing + "/digest"}, "--digest-out: cannot write '" + missing + "/digest'"},
      {{"load", ckpt, "--report-out", missing + "-{rank}/r.json"},
       "--report-out: cannot write '" + missing + "-0/r.json'"},
      {{"load", ckpt, "--report-out", ckpt}, "--report-out: '" + ckpt + "' is a directory"},
      {{"digest", ckpt, "--out", missing + "/digest"}, "--out: cannot write '" + missing + "/digest'"},
  };
  for (const auto& [args, message] : cases) {
    CommandResult r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[2] << ": " << describe(r);
    EXPECT_CONTAINS(r.err, message);
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  fs::create_directories(dir / "out-0");
  ok({"load", ckpt, "--digest-out", (dir / "out-{rank}" / "digest").string()});
  EXPECT_EQ(testing::read_file(dir / "out-0" / "digest"), ok({"digest", ckpt}).out);
}

// A snapshot of the Hugging Face hub cache (every file a symlink to ../../blobs/<sha256>) verifies and loads with the
// digests of the plain checkpoint.
TEST(Cli, HubCacheSnapshotVerifiesAndLoadsBitExact) {
  TempDir dir;
  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "3MB", "--max-shard-size", "1MB", "--dtypes", "torch"});
  const std::string expected = ok({"digest", ckpt}).out;
  const std::string snapshot = testing::move_into_hub_cache(ckpt, dir / "hub", "models--org--name").string();
  EXPECT_CONTAINS(ok({"verify", snapshot}).out, "ok: 4 shards");
  ok({"load", snapshot, "--digest-out", (dir / "digest").string()});
  EXPECT_EQ(testing::read_file(dir / "digest"), expected);
}

// `--` ends shardcast-run's options, as its own error message advises: a command that starts with '-' then runs.
TEST(Cli, ShardcastRunTakesEverythingAfterDoubleDashAsTheCommand) {
  TempDir dir;
  testing::write_file(dir / "-greet", "#!/bin/sh\necho \"hello $*\"\n");
  fs::permissions(dir / "-greet", fs::perms::owner_all);
  const std::string path = "PATH=" + dir.path().string() + ":/usr/bin:/bin";
  CommandResult r = run_command(
      {"/usr/bin/env", path, SHARDCAST_RUN_PATH, "--nproc-per-node", "1", "--", "-greet", "a", "--b", "-n", "2"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(r.out, "[rank0]: hello a --b -n 2\n");
  r = run_command({"/usr/bin/env", path, SHARDCAST_RUN_PATH, "-n", "1", "-greet"});
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_CONTAINS(r.err, "unknown option '-greet' (see --help; put -- before a command that starts with -)");

  r = run_command({SHARDCAST_RUN_PATH, "--nnodes", "2", "--node-rank", "2", "/bin/true"});
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_CONTAINS(r.err, "--node-rank 2 is not in 0 .. 1");
  r = run_command({SHARDCAST_RUN_PATH, "--node-rank", "-1", "/bin/true"});
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_CONTAINS(r.err, "--node-rank: must be at least 0, not -1");
  r = run_command({SHARDCAST_RUN_PATH, "--nproc-per-node", "0", "/bin/true"});
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_CONTAINS(r.err, "--nproc-per-node: Value 0 not in range 1 to 1024");
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
  // Loads check what they read too, on every path: staged into shared memory, or streamed through the GPU ring (the
  // host stand-in here) (issue 13).
  for (std::vector<std::string> extra :
       {std::vector<std::string>{"--placement", "shared"}, std::vector<std::string>{"--placement", "private"},
        std::vector<std::string>{"--placement", "cuda", "--device-stand-in"}}) {
    std::vector<std::string> args{"load", dir.path().string()};
    args.insert(args.end(), extra.begin(), extra.end());
    CommandResult load = run_cli(args);
    EXPECT_EQ(load.exit_code, 1) << describe(load);
    EXPECT_CONTAINS(load.err, "BOOL tensor 'm' holds byte value 7 at element 1");
  }
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

TEST(Cli, TiedBinWeightsAreStagedOnceAndEveryCommandCountsThemOnce) {
  TempDir dir;
  // A 1 MiB embedding tied to the output layer, as transformers saves it (one storage, two names).
  CommandResult py =
      run_command({SHARDCAST_PYTHON, "-c",
                   "import sys, torch; e = torch.randn(1024, 256); "
                   "torch.save({'embed.weight': e, 'lm_head.weight': e, 'norm': torch.ones(256)}, sys.argv[1])",
                   (dir / "pytorch_model.bin").string()});
  ASSERT_EQ(py.exit_code, 0) << describe(py);
  const uint64_t once = 1024 * 256 * 4 + 256 * 4;
  const std::string ckpt = dir.path().string();

  auto inspect = nlohmann::json::parse(ok({"inspect", ckpt, "--json"}).out);
  EXPECT_EQ(inspect["tensor_bytes"], once);
  EXPECT_EQ(inspect["tied_tensors"], 1);
  EXPECT_EQ(inspect["dtypes"]["F32"]["bytes"], once);
  EXPECT_CONTAINS(ok({"verify", ckpt}).out, "ok: 1 shards, 3 tensors, " + format_size(once) + " read");
  for (const char* placement : {"shared", "cow", "private"}) {
    SCOPED_TRACE(placement);
    const fs::path report = dir / (std::string(placement) + ".json");
    CommandResult r = ok({"load", ckpt, "--placement", placement, "--report-out", report.string()});
    EXPECT_CONTAINS(r.out, "loaded 3 tensors (" + format_size(once) + ")");
    auto j = nlohmann::json::parse(testing::read_file(report));
    EXPECT_EQ(j["tensor_bytes"], once);
    EXPECT_LE(j["node_bytes_staged"].get<uint64_t>(), once + 64) << "the tied embedding was staged twice";
  }
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
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "--ring: '2by1MB' is not SLOTSxSIZE");
}

// `doctor` checks the host; with a checkpoint, whether its node copy fits; each problem comes with its fix.
TEST(Cli, DoctorNamesWhatWouldFailAndTheFix) {
  auto report = nlohmann::json::parse(ok({"doctor", "--json"}).out);
  std::vector<std::string> names;
  for (const auto& check : report["checks"]) {
    names.push_back(check["check"]);
    EXPECT_TRUE(check["status"] == "ok" || check["status"] == "warn") << check.dump();
    EXPECT_EQ(check["status"] == "ok", check["fix"] == "") << check.dump();
  }
  EXPECT_EQ(names, (std::vector<std::string>{"launcher", "shared memory", "memory", "cgroup memory", "locked memory",
                                             "segments", "node link", "left segments", "kept copies"}));
  EXPECT_EQ(report["failures"], 0);

  TempDir dir;
  const std::string ckpt = (dir / "ckpt").string();
  ok({"synth", ckpt, "--size", "4MB", "--dtypes", "torch"});
  // A named segment of a dead job (as earlier versions left) is found, and gc is the fix.
  fs::create_directories(dir / "segments");
  testing::write_file(dir / "segments" / "shardcast-old-job-n0-l0-s0", std::string(8192, 'x'));
  CommandResult r = ok({"doctor", ckpt, "--shm-dir", (dir / "segments").string()});
  EXPECT_CONTAINS(r.out, "warn  left segments  1 named segment(s) of dead jobs hold 8.19 kB");
  EXPECT_CONTAINS(r.out, "fix: shardcast gc");

  fs::create_directories(dir / "tiny");
  if (mount("tmpfs", (dir / "tiny").c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a 1 MB tmpfs here (needs root): " << std::strerror(errno);
  }
  r = run_cli({"doctor", ckpt, "--shm-dir", (dir / "tiny").string()});
  umount2((dir / "tiny").c_str(), MNT_DETACH);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_CONTAINS(r.out, "fail  shared memory  " + (dir / "tiny").string() +
                             " has 1.05 MB free; the checkpoint's node "
                             "copy needs 4.00 MB");
  EXPECT_CONTAINS(r.out, "fix: give the container more (docker run --shm-size=...)");
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

// Two jobs started at once on a cold node with --keep stage the copy once: one keeps it, the other waits for it and
// reuses it. ls lists it with what it holds; gc leaves it until it expires; gc --kept removes it and nothing is left.
TEST(Cli, TwoJobsAtOnceStageOneKeptCopyThatLsListsAndGcRemoves) {
  TempDir dir;
  ok({"synth", (dir / "ckpt").string(), "--size", "150MB", "--dtypes", "torch"});
  fs::create_directories(dir / "shm");
  const std::string shm = (dir / "shm").string();
  auto job = [&](const std::string& name) {
    return run_cli({"load", (dir / "ckpt").string(), "--dtype", "f32", "--map-files", "never", "--keep", "10m",
                    "--shm-dir", shm, "--report-out", (dir / (name + ".json")).string()});
  };
  auto first = std::async(std::launch::async, job, "a");
  // The second starts once the first has taken the key's lock, i.e. while it stages.
  const fs::path store = shm::KeptStore(shm::Location{dir / "shm"}).dir();
  for (int i = 0; i < 2000 && !fs::exists(store); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto second = std::async(std::launch::async, job, "b");
  const CommandResult a = first.get(), b = second.get();
  ASSERT_EQ(a.exit_code, 0) << describe(a);
  ASSERT_EQ(b.exit_code, 0) << describe(b);
  const auto ra = nlohmann::json::parse(testing::read_file(dir / "a.json"));
  const auto rb = nlohmann::json::parse(testing::read_file(dir / "b.json"));
  const std::set<std::string> states{ra["kept"]["state"], rb["kept"]["state"]};
  EXPECT_EQ(states, (std::set<std::string>{"kept", "reused"})) << a.out << b.out;
  EXPECT_EQ(ra["kept"]["key"], rb["kept"]["key"]);
  const auto& reused = ra["kept"]["state"] == "reused" ? ra : rb;
  EXPECT_EQ(reused["rank_bytes_staged"], 0);
  EXPECT_LT(reused["rank_bytes_read"].get<uint64_t>(), 64u << 10);
  EXPECT_CONTAINS(ra["kept"]["state"] == "kept" ? a.out : b.out, "kept this node's copy as");

  auto listed = nlohmann::json::parse(ok({"ls", "--shm-dir", shm, "--json"}).out);
  ASSERT_EQ(listed["copies"].size(), 1u);
  EXPECT_EQ(listed["copies"][0]["key"], ra["kept"]["key"]);
  EXPECT_EQ(listed["copies"][0]["checkpoint"], fs::absolute(dir / "ckpt").string());
  EXPECT_GE(listed["copies"][0]["bytes"].get<uint64_t>(), ra["node_bytes_staged"].get<uint64_t>());
  EXPECT_EQ(listed["copies"][0]["expired"], false);
  EXPECT_CONTAINS(ok({"ls", "--shm-dir", shm}).out, "1 kept copy holding");
  EXPECT_CONTAINS(ok({"doctor", "--shm-dir", shm}).out, "1 kept copy of earlier jobs hold");

  EXPECT_CONTAINS(ok({"gc", "--shm-dir", shm}).out, "0 kept copies removed");
  EXPECT_CONTAINS(ok({"gc", "--shm-dir", shm, "--kept"}).out, "1 kept copy removed");
  EXPECT_TRUE(fs::is_empty(dir / "shm"));
}

TEST(Cli, ABadKeepDurationExitsTwoNamingIt) {
  CommandResult r = run_cli({"load", "/nonexistent", "--keep", "10 minutes"});
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_CONTAINS(r.err, "--keep");
  r = run_cli({"load", "/nonexistent", "--keep", "10m", "--placement", "cuda", "--device-stand-in"});
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_CONTAINS(r.err, "placement cuda streams from the files and keeps nothing");
}

}  // namespace
}  // namespace shardcast
