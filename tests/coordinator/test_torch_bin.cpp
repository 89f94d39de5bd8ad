// torch .bin checkpoints written by real PyTorch (tests/fixtures/make_torch_checkpoints.py): every tensor's digest
// equals PyTorch's, ties are found, malformed files fail with their own error, and nothing in a pickle ever runs.
#include <gtest/gtest.h>

#include <sstream>

#include "coordinator/catalog.h"
#include "coordinator/convert.h"
#include "coordinator/digest.h"
#include "coordinator/pickle_compat.h"
#include "coordinator/torch_bin.h"
#include "coordinator/verify.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const fs::path kFixtures = SHARDCAST_FIXTURES_DIR;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> expected(const std::string& name) {
  return lines_of(testing::read_file(kFixtures / name / "expected.digest"));
}

void expect_same_digests(const std::vector<std::string>& got, const std::vector<std::string>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "tensor " << want[i].substr(0, want[i].find('\t'));
}

std::string error_of(const fs::path& path, ErrorCode* code = nullptr) {
  try {
    read_torch_bin(path);
  } catch (const Error& e) {
    if (code) *code = e.code();
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(TorchBin, EveryCaseMatchesTheDigestsPyTorchComputed) {
  for (const char* name : {"all_cases", "sharded", "module", "single"}) {
    SCOPED_TRACE(name);
    expect_same_digests(digest_checkpoint(open_catalog(kFixtures / name)), expected(name));
  }
}

TEST(TorchBin, StridedViewsAndOffsetsComeBackContiguous) {
  auto tensors = read_torch_bin(kFixtures / "all_cases" / "pytorch_model.bin");
  auto find = [&](const std::string& n) {
    return *std::find_if(tensors.begin(), tensors.end(), [&](const BinTensor& t) { return t.name == n; });
  };
  EXPECT_EQ(find("transposed").shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(find("transposed").bytes.size, 15u * 4);
  EXPECT_EQ(find("column_slice").shape, (std::vector<int64_t>{10, 2}));
  EXPECT_EQ(find("column_slice").bytes.size, 20u * 4);
  EXPECT_EQ(find("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(find("empty_2d").bytes.size, 0u);
}

TEST(TorchBin, TiedWeightsShareOneCopyAndCountOnce) {
  auto tensors = read_torch_bin(kFixtures / "module" / "pytorch_model.bin");
  ASSERT_EQ(tensors.size(), 4u);
  EXPECT_EQ(tensors[3].name, "2.weight");
  EXPECT_EQ(tensors[3].tied_to, "0.weight");  // state_dict() saved them as two views of one storage
  EXPECT_EQ(tensors[3].bytes.data, tensors[0].bytes.data);
  Catalog c = open_catalog(kFixtures / "module");
  EXPECT_EQ(c.tensor_bytes(), 160u + 16 + 16);
  Catalog all = open_catalog(kFixtures / "all_cases");
  EXPECT_EQ(all.find("model.embed_tokens.weight")->tied_to, "lm_head.weight");
}

TEST(TorchBin, ShardedBinWithIndexOpensAllShards) {
  Catalog c = open_catalog(kFixtures / "sharded");
  EXPECT_EQ(c.format, CheckpointFormat::kTorchBin);
  EXPECT_EQ(c.shards.size(), 3u);
  EXPECT_EQ(c.shards[2].tensor_count, 1u);  // a one-tensor shard: Python pickles it with SETITEM
  EXPECT_FALSE(c.find("encoder.weight")->has_file_range);
}

TEST(TorchBin, LegacyFormatIsRefusedWithHowToFixIt) {
  ErrorCode code;
  std::string e = error_of(kFixtures / "legacy" / "pytorch_model.bin", &code);
  EXPECT_EQ(code, ErrorCode::kCorruptCheckpoint);
  EXPECT_CONTAINS(e, (kFixtures / "legacy" / "pytorch_model.bin").string());
  EXPECT_CONTAINS(e, "legacy torch.save format");
}

TEST(TorchBin, APickleThatWouldRunCodeIsRefusedAndRunsNothing) {
  std::string e = error_of(kFixtures / "malicious" / "pytorch_model.bin");
  EXPECT_CONTAINS(e, "unknown type posix.system");
  EXPECT_FALSE(fs::exists(kFixtures / "pwned"));
}

TEST(TorchBin, NestedDictsComplexDtypesAndTruncatedFilesHaveTheirOwnErrors) {
  EXPECT_CONTAINS(error_of(kFixtures / "nested" / "pytorch_model.bin"), "key 'model' holds a GenericDict, not a tensor");
  EXPECT_CONTAINS(error_of(kFixtures / "complex" / "pytorch_model.bin"), "tensor 'z' has dtype ComplexFloat");
  ErrorCode code;
  EXPECT_CONTAINS(error_of(kFixtures / "truncated" / "pytorch_model.bin", &code), "cannot decode the torch.save archive");
  EXPECT_EQ(code, ErrorCode::kCorruptCheckpoint);
}

TEST(TorchBin, RandomCorruptionNeverCrashes) {
  const std::string sound = testing::read_file(kFixtures / "single" / "pytorch_model.bin");
  TempDir dir;
  uint64_t state = 777;
  auto next = [&] { return state = state * 6364136223846793005ull + 1442695040888963407ull, state >> 33; };
  for (int round = 0; round < 100; ++round) {
    std::string bytes = sound;
    for (int e = 0; e < 3; ++e) bytes[next() % bytes.size()] = static_cast<char>(next());
    testing::write_file(dir / "mutant.bin", bytes);
    try {
      read_torch_bin(dir / "mutant.bin");
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint) << e.what();
    }
  }
}

TEST(TorchBin, ConvertToSafetensorsKeepsEveryDigestAndVerifies) {
  for (const char* name : {"all_cases", "sharded", "module"}) {
    SCOPED_TRACE(name);
    TempDir dir;
    ConvertOptions options;
    options.max_shard_size = 200;
    ConvertResult r = convert_checkpoint(kFixtures / name, dir / "st", options);
    EXPECT_EQ(r.untied, 1u);  // each holds one tied pair, written as two tensors
    EXPECT_TRUE(verify_checkpoint(dir / "st").problems.empty());
    expect_same_digests(digest_checkpoint(open_catalog(dir / "st")), expected(name));
  }
}

TEST(TorchBin, WrittenBinLoadsInPyTorchWithTheSameDigests) {
  TempDir dir;
  auto tensors = read_torch_bin(kFixtures / "all_cases" / "pytorch_model.bin");
  std::vector<TensorData> data(tensors.begin(), tensors.end());
  write_torch_bin(dir / "pytorch_model.bin", data);
  auto mine = digest_checkpoint(open_catalog(dir.path()));
  const std::string script =
      "import hashlib,sys,torch\n"
      "N={torch.bool:'BOOL',torch.uint8:'U8',torch.int8:'I8',torch.int16:'I16',torch.int32:'I32',torch.int64:'I64',"
      "torch.float16:'F16',torch.bfloat16:'BF16',torch.float32:'F32',torch.float64:'F64'}\n"
      "sd=torch.load(sys.argv[1])\n"
      "for k in sorted(sd):\n"
      "  t=sd[k]; b=t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()\n"
      "  print(k+'\\t'+N[t.dtype]+'\\t['+','.join(map(str,t.shape))+']\\t'+hashlib.sha256(b).hexdigest())\n";
  auto py = testing::run_command({SHARDCAST_PYTHON, "-c", script, (dir / "pytorch_model.bin").string()});
  ASSERT_EQ(py.exit_code, 0) << py.err;
  expect_same_digests(lines_of(py.out), expected("all_cases"));
  expect_same_digests(mine, expected("all_cases"));
}

TEST(PickleCompat, LeavesStreamsItDoesNotUnderstandAlone) {
  EXPECT_EQ(make_pickle_loadable_by_libtorch("garbage"), "garbage");
  EXPECT_EQ(make_pickle_loadable_by_libtorch(""), "");
  // {} with one item: PROTO 2, EMPTY_DICT, 'a', 1, SETITEM, STOP -> MARK before the key, SETITEMS.
  const std::string one_item("\x80\x02}X\x01\x00\x00\x00" "aK\x01s.", 13);
  const std::string expected_out("\x80\x02}(X\x01\x00\x00\x00" "aK\x01u.", 14);
  EXPECT_EQ(make_pickle_loadable_by_libtorch(one_item), expected_out);
}

}  // namespace
}  // namespace shardcast
