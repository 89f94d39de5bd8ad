// torch .bin checkpoints written by real PyTorch (tests/fixtures/make_torch_checkpoints.py): every tensor's digest
// equals PyTorch's, ties are found, malformed files fail with their own error, and nothing in a pickle ever runs.
// No torch headers here: the test sees .bin files only through shardcast's own API.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

#include "coordinator/catalog.h"
#include "coordinator/convert.h"
#include "coordinator/digest.h"
#include "coordinator/plan.h"
#include "coordinator/torch_bin.h"
#include "coordinator/verify.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const fs::path kFixtures = SHARDCAST_FIXTURES_DIR;

fs::path bin_of(const std::string& fixture) {
  return kFixtures / fixture / "pytorch_model.bin";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> expected(const std::string& fixture) {
  return lines_of(testing::read_file(kFixtures / fixture / "expected.digest"));
}

std::string name_of_line(const std::string& line) {
  return line.substr(0, line.find('\t'));
}

// Compares digest lines tensor by tensor (both lists are sorted by name) and names each tensor that differs, is
// missing or is unexpected, so one missing tensor does not make every later line look wrong.
void expect_same_digests(const std::vector<std::string>& got, const std::vector<std::string>& want) {
  EXPECT_TRUE(std::is_sorted(got.begin(), got.end(), [](const std::string& a, const std::string& b) {
    return name_of_line(a) < name_of_line(b);
  })) << "digest lines are not sorted by name";
  std::map<std::string, std::string> got_by_name, want_by_name;
  for (const std::string& line : got) got_by_name[name_of_line(line)] = line;
  for (const std::string& line : want) want_by_name[name_of_line(line)] = line;
  EXPECT_EQ(got_by_name.size(), got.size()) << "a tensor name appears twice";
  for (const auto& [name, line] : want_by_name) {
    auto it = got_by_name.find(name);
    if (it == got_by_name.end()) {
      ADD_FAILURE() << "missing tensor '" << name << "'";
    } else {
      EXPECT_EQ(it->second, line) << "tensor '" << name << "' differs";
    }
  }
  for (const auto& [name, line] : got_by_name) {
    if (!want_by_name.count(name)) ADD_FAILURE() << "unexpected tensor '" << name << "': " << line;
  }
}

// Of what was read (BinTensor) or written (TensorData).
template <typename Tensor>
std::vector<std::string> digests_of(const std::vector<Tensor>& tensors) {
  std::vector<std::string> lines;
  for (const Tensor& t : tensors) lines.push_back(digest_line(t, t.bytes.data, t.bytes.size));
  return lines;
}

const BinTensor& find(const std::vector<BinTensor>& tensors, const std::string& name) {
  auto it = std::find_if(tensors.begin(), tensors.end(), [&](const BinTensor& t) { return t.name == name; });
  if (it == tensors.end()) throw std::runtime_error("no tensor '" + name + "'");
  return *it;
}

// The ASSERT_THROW of these tests: `action` must throw a shardcast::Error with `code` whose message holds every
// one of `needles`.
::testing::AssertionResult fails_with(const std::function<void()>& action, ErrorCode code,
                                      const std::vector<std::string>& needles) {
  try {
    action();
  } catch (const Error& e) {
    if (e.code() != code) {
      return ::testing::AssertionFailure() << "error code " << error_code_name(e.code()) << ", expected "
                                           << error_code_name(code) << ": " << e.what();
    }
    const std::string what = e.what();
    for (const std::string& needle : needles) {
      if (what.find(needle) == std::string::npos) {
        return ::testing::AssertionFailure() << "message lacks \"" << needle << "\": " << what;
      }
    }
    return ::testing::AssertionSuccess() << what;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw something other than shardcast::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "nothing was thrown";
}

// Every way a .bin file is opened: the full decode, the metadata-only decode the catalog uses, and the catalog of
// its directory. Each must fail with `code` and all of `needles` (the catalog adds the shard's name in front).
void expect_every_reader_fails(const std::string& fixture, ErrorCode code, const std::vector<std::string>& needles) {
  const fs::path file = bin_of(fixture);
  std::vector<std::string> with_path = needles;
  with_path.push_back(file.string());
  EXPECT_TRUE(fails_with([&] { read_torch_bin(file); }, code, with_path)) << "read_torch_bin";
  EXPECT_TRUE(fails_with([&] { read_torch_bin_metadata(file); }, code, with_path)) << "read_torch_bin_metadata";
  std::vector<std::string> with_shard = with_path;
  with_shard.push_back("reading shard 1/1 'pytorch_model.bin'");
  EXPECT_TRUE(fails_with([&] { open_catalog(kFixtures / fixture); }, code, with_shard)) << "open_catalog";
  VerifyReport report = verify_checkpoint(kFixtures / fixture);
  ASSERT_FALSE(report.problems.empty()) << "verify found nothing wrong";
  EXPECT_NE(report.problems.front().find(file.string()), std::string::npos) << report.problems.front();
}

std::vector<uint8_t> bytes_of(const Bytes& b) {
  return std::vector<uint8_t>(b.data, b.data + b.size);
}

template <typename T>
T element(const BinTensor& t, size_t i) {
  T value;
  EXPECT_LE((i + 1) * sizeof(T), t.bytes.size) << t.name;
  std::memcpy(&value, t.bytes.data + i * sizeof(T), sizeof(T));
  return value;
}

// Digest lines as PyTorch computes them for every .bin file given (torch.load, then the fixture script's formula).
void pytorch_digests(const std::vector<fs::path>& files, bool weights_only, std::vector<std::string>* lines) {
  const std::string script =
      "import hashlib,sys,torch\n"
      "N={torch.bool:'BOOL',torch.uint8:'U8',torch.int8:'I8',torch.int16:'I16',torch.int32:'I32',torch.int64:'I64',"
      "torch.float16:'F16',torch.bfloat16:'BF16',torch.float32:'F32',torch.float64:'F64'}\n"
      "weights_only=sys.argv[1]=='1'\n"
      "sd={}\n"
      "for f in sys.argv[2:]:\n"
      "  sd.update(torch.load(f,weights_only=True) if weights_only else torch.load(f))\n"
      "for k in sorted(sd):\n"
      "  t=sd[k]; b=t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()\n"
      "  print(k+'\\t'+N[t.dtype]+'\\t['+','.join(map(str,t.shape))+']\\t'+hashlib.sha256(b).hexdigest())\n";
  std::vector<std::string> argv = {SHARDCAST_PYTHON, "-c", script, weights_only ? "1" : "0"};
  for (const fs::path& f : files) argv.push_back(f.string());
  testing::CommandResult py = testing::run_command(argv);
  ASSERT_FALSE(py.signaled || py.timed_out) << py.err;
  ASSERT_EQ(py.exit_code, 0) << py.err;
  *lines = lines_of(py.out);
}

// For files that may crash a careless reader: `action` runs in a child process (a death test), so a crash is
// reported as a failure instead of ending this binary. The child exits 0 only when `action` threw
// kCorruptCheckpoint with every one of `needles` in its message.
[[noreturn]] void exit_with_verdict(const std::function<void()>& action, const std::vector<std::string>& needles) {
  ::testing::AssertionResult r = fails_with(action, ErrorCode::kCorruptCheckpoint, needles);
  std::fprintf(stderr, "%s: %s\n", r ? "refused" : "NOT REFUSED AS EXPECTED", r.message());
  std::fflush(stderr);
  std::_Exit(r ? 0 : 1);
}

#define EXPECT_REFUSED_WITHOUT_CRASHING(statement, ...) \
  EXPECT_EXIT(exit_with_verdict([&] { statement; }, __VA_ARGS__), ::testing::ExitedWithCode(0), "refused: ")

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// --- Sound checkpoints -----------------------------------------------------------------------------------------------

TEST(TorchBin, ReadTorchBinOfAllCasesGivesExactlyPyTorchsDigests) {
  std::vector<BinTensor> tensors = read_torch_bin(bin_of("all_cases"));
  EXPECT_TRUE(std::is_sorted(tensors.begin(), tensors.end(),
                             [](const BinTensor& a, const BinTensor& b) { return a.name < b.name; }));
  for (const BinTensor& t : tensors) EXPECT_EQ(t.bytes.size, t.nbytes()) << t.name;
  expect_same_digests(digests_of(tensors), expected("all_cases"));
}

TEST(TorchBin, CatalogDigestsOfEveryCaseEqualPyTorchsWhetherOpenedByDirectoryOrFile) {
  for (const char* name : {"all_cases", "module", "single", "single_state_dict"}) {
    SCOPED_TRACE(name);
    expect_same_digests(digest_checkpoint(open_catalog(kFixtures / name)), expected(name));
    expect_same_digests(digest_checkpoint(open_catalog(bin_of(name))), expected(name));
  }
  expect_same_digests(digest_checkpoint(open_catalog(kFixtures / "sharded" / "pytorch_model.bin.index.json")),
                      expected("sharded"));
}

TEST(TorchBin, MetadataReadHasTheSameNamesDtypesShapesAndTiesWithoutBytes) {
  for (const char* name : {"all_cases", "module", "single_state_dict"}) {
    SCOPED_TRACE(name);
    std::vector<BinTensor> full = read_torch_bin(bin_of(name));
    std::vector<BinTensor> meta = read_torch_bin_metadata(bin_of(name));
    ASSERT_EQ(full.size(), meta.size());
    for (size_t i = 0; i < full.size(); ++i) {
      EXPECT_EQ(meta[i].name, full[i].name);
      EXPECT_EQ(meta[i].dtype, full[i].dtype) << full[i].name;
      EXPECT_EQ(meta[i].shape, full[i].shape) << full[i].name;
      EXPECT_EQ(meta[i].tied_to, full[i].tied_to) << full[i].name;
      EXPECT_EQ(meta[i].bytes.size, 0u) << full[i].name;
    }
  }
}

TEST(TorchBin, TiedWeightsMarkTheLaterNameShareBytesAndCountOnce) {
  std::vector<BinTensor> tensors = read_torch_bin(bin_of("all_cases"));
  const BinTensor& first = find(tensors, "lm_head.weight");  // sorts before model.embed_tokens.weight
  const BinTensor& later = find(tensors, "model.embed_tokens.weight");
  EXPECT_EQ(first.tied_to, "");
  EXPECT_EQ(later.tied_to, "lm_head.weight");
  EXPECT_EQ(later.bytes.data, first.bytes.data);  // one copy in memory
  EXPECT_EQ(later.bytes.size, 8u * 4 * 4);
  size_t tied = std::count_if(tensors.begin(), tensors.end(), [](const BinTensor& t) { return !t.tied_to.empty(); });
  EXPECT_EQ(tied, 1u) << "views that only overlap (row_slice, column_slice) are not ties";

  Catalog c = open_catalog(kFixtures / "all_cases");
  ASSERT_NE(c.find("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ(c.find("model.embed_tokens.weight")->tied_to, "lm_head.weight");
  EXPECT_EQ(c.find("lm_head.weight")->tied_to, "");
  uint64_t every = 0;
  for (const TensorInfo& t : c.tensors) every += t.nbytes();
  EXPECT_EQ(c.tensor_bytes(), every - 8 * 4 * 4);

  // A real module's state_dict(): the tie is two views of one storage, not one object.
  std::vector<BinTensor> module = read_torch_bin(bin_of("module"));
  EXPECT_EQ(find(module, "2.weight").tied_to, "0.weight");
  EXPECT_EQ(find(module, "2.weight").bytes.data, find(module, "0.weight").bytes.data);
  EXPECT_EQ(open_catalog(kFixtures / "module").tensor_bytes(), 10u * 4 * 4 + 4 * 4 + 4 * 4);
}

TEST(TorchBin, ThePlanStagesATiedStorageOnceInEveryDtype) {
  const Catalog c = open_catalog(kFixtures / "all_cases");
  for (std::optional<DType> dtype : {std::optional<DType>(), std::optional<DType>(DType::kBF16)}) {
    LoadRequest request;
    request.dtype = dtype;
    const Plan plan = make_plan(c, request, 2);
    ASSERT_EQ(plan.segments.size(), 1u);
    const PlannedTensor *original = nullptr, *tied = nullptr;
    uint64_t bytes = 0;
    for (const PlannedTensor& p : plan.segments[0].tensors) {
      const std::string& name = c.tensors[p.catalog_index].name;
      if (name == "lm_head.weight") original = &p;
      if (name == "model.embed_tokens.weight") tied = &p;
      if (!p.tied) bytes += p.nbytes;
      EXPECT_EQ(p.tied, name == "model.embed_tokens.weight") << name;
    }
    ASSERT_TRUE(original && tied);
    EXPECT_EQ(tied->offset, original->offset);
    EXPECT_EQ(tied->nbytes, original->nbytes);
    EXPECT_EQ(tied->dtype, original->dtype);
    // Nothing reads the tied name: its bytes are its original's, read once.
    EXPECT_EQ(plan.segments[0].reads.size(), plan.segments[0].tensors.size() - 1);
    EXPECT_EQ(plan.tensor_bytes, bytes);
    if (!dtype) {
      EXPECT_EQ(plan.tensor_bytes, c.tensor_bytes());
    }
  }
  // Only the later name selected: it holds the bytes itself.
  LoadRequest request;
  request.tensors = {"model.embed_tokens.weight"};
  const Plan plan = make_plan(c, request, 1);
  ASSERT_EQ(plan.tensor_count, 1u);
  EXPECT_FALSE(plan.segments[0].tensors[0].tied);
  EXPECT_EQ(plan.tensor_bytes, 8u * 4 * 4);
}

TEST(TorchBin, StridedOffsetAndExpandedViewsComeBackContiguousAndBitExact) {
  std::vector<BinTensor> tensors = read_torch_bin(bin_of("all_cases"));
  const BinTensor& rows = find(tensors, "row_slice");     // big[3:7]: 4x6, storage offset 18
  const BinTensor& cols = find(tensors, "column_slice");  // big[:, 1:3]: 10x2, strides (6, 1), offset 1
  ASSERT_EQ(rows.shape, (std::vector<int64_t>{4, 6}));
  ASSERT_EQ(cols.shape, (std::vector<int64_t>{10, 2}));
  ASSERT_EQ(rows.bytes.size, 4u * 6 * 4);
  ASSERT_EQ(cols.bytes.size, 10u * 2 * 4);
  EXPECT_NE(rows.bytes.data, cols.bytes.data);
  // Both are views of one storage: big[3 + r][1 + c] read through either must be the same float, bit for bit.
  for (size_t r = 0; r < 4; ++r) {
    for (size_t c = 0; c < 2; ++c) {
      EXPECT_EQ(std::memcmp(cols.bytes.data + ((r + 3) * 2 + c) * 4, rows.bytes.data + (r * 6 + 1 + c) * 4, 4), 0)
          << "big[" << r + 3 << "][" << c + 1 << "]";
    }
  }
  const BinTensor& transposed = find(tensors, "transposed");
  EXPECT_EQ(transposed.shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(transposed.bytes.size, 15u * 4);

  const BinTensor& expanded = find(tensors, "expanded");  // stride 0: 3 stored values seen as 4 rows
  ASSERT_EQ(expanded.shape, (std::vector<int64_t>{4, 3}));
  ASSERT_EQ(expanded.bytes.size, 4u * 3 * 2);
  for (size_t r = 1; r < 4; ++r) EXPECT_EQ(std::memcmp(expanded.bytes.data, expanded.bytes.data + r * 6, 6), 0) << r;

  const BinTensor& scalar = find(tensors, "scalar");
  EXPECT_EQ(scalar.dtype, DType::kF64);
  EXPECT_EQ(scalar.shape, std::vector<int64_t>{});
  EXPECT_EQ(element<double>(scalar, 0), 3.25);
  EXPECT_EQ(find(tensors, "empty").shape, std::vector<int64_t>{0});
  EXPECT_EQ(find(tensors, "empty").bytes.size, 0u);
  EXPECT_EQ(find(tensors, "empty_2d").shape, (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(find(tensors, "empty_2d").dtype, DType::kBF16);
  EXPECT_EQ(find(tensors, "empty_2d").bytes.size, 0u);
  for (uint8_t b : bytes_of(find(tensors, "mask").bytes)) EXPECT_LE(b, 1);
}

TEST(TorchBin, ShardedCheckpointOpensFromItsDirectoryWithTwoShardsAndPyTorchsDigests) {
  Catalog c = open_catalog(kFixtures / "sharded");
  EXPECT_EQ(c.format, CheckpointFormat::kTorchBin);
  EXPECT_EQ(c.index_path, kFixtures / "sharded" / "pytorch_model.bin.index.json");
  ASSERT_EQ(c.shards.size(), 2u);
  EXPECT_EQ(c.shards[0].file, "pytorch_model-00001-of-00002.bin");
  EXPECT_EQ(c.shards[1].file, "pytorch_model-00002-of-00002.bin");
  EXPECT_EQ(c.shards[0].tensor_count + c.shards[1].tensor_count, c.tensors.size());
  EXPECT_EQ(c.tensors.size(), expected("sharded").size());
  for (const ShardInfo& s : c.shards) {
    EXPECT_EQ(s.format, CheckpointFormat::kTorchBin) << s.file;
    EXPECT_TRUE(s.readable) << s.file;
  }
  ASSERT_NE(c.find("encoder.weight"), nullptr);
  EXPECT_EQ(c.find("encoder.weight")->shard, 0u);
  EXPECT_FALSE(c.find("encoder.weight")->has_file_range);
  ASSERT_NE(c.find("decoder.lm_head.weight"), nullptr);
  EXPECT_EQ(c.find("decoder.lm_head.weight")->shard, 1u);
  EXPECT_EQ(c.find("decoder.lm_head.weight")->tied_to, "decoder.embed.weight");
  // The index counts the tied pair twice, as transformers' shard_checkpoint did; the catalog counts it once.
  uint64_t every = 0;
  for (const TensorInfo& t : c.tensors) every += t.nbytes();
  ASSERT_TRUE(c.index_total_size.has_value());
  EXPECT_EQ(*c.index_total_size, every);
  EXPECT_EQ(c.tensor_bytes(), every - 6 * 4 * 2);

  expect_same_digests(digest_checkpoint(c), expected("sharded"));
  VerifyReport report = verify_checkpoint(kFixtures / "sharded");
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
  EXPECT_EQ(report.shards, 2u);
  EXPECT_EQ(report.tensors, c.tensors.size());
}

// --- Files that must be refused --------------------------------------------------------------------------------------

TEST(TorchBin, LegacyFormatIsCorruptCheckpointNamingTheFileAndHowToFixIt) {
  expect_every_reader_fails("legacy", ErrorCode::kCorruptCheckpoint, {"legacy torch.save format", "re-save it"});
}

TEST(TorchBin, APickleThatWouldRunAShellCommandIsRefusedAndRunsNothing) {
  // The fixture really carries the payload (zip records are stored uncompressed): os.system("touch .../pwned").
  const std::string raw = testing::read_file(bin_of("malicious"));
  ASSERT_NE(raw.find("system"), std::string::npos);
  ASSERT_NE(raw.find((kFixtures / "pwned").string()), std::string::npos);

  expect_every_reader_fails("malicious", ErrorCode::kCorruptCheckpoint, {"cannot decode", "system"});
  EXPECT_FALSE(fs::exists(kFixtures / "pwned")) << "the pickle's os.system call ran";
}

TEST(TorchBin, NestedDictIsRefusedNamingTheKeyModel) {
  expect_every_reader_fails("nested", ErrorCode::kCorruptCheckpoint, {"key 'model'", "flat state dict"});
}

TEST(TorchBin, ComplexTensorIsRefusedNamingTheTensorAndItsDtype) {
  expect_every_reader_fails("complex", ErrorCode::kCorruptCheckpoint, {"tensor 'z'", "ComplexFloat"});
}

TEST(TorchBin, TruncatedFileIsCorruptCheckpointNamingTheFile) {
  expect_every_reader_fails("truncated", ErrorCode::kCorruptCheckpoint,
                            {"zip archive: no end-of-central-directory record"});
}

// Where in an archive's bytes the zip structure `signature` ("PK\1\2" directory entry, "PK\3\4" local header) of the
// record whose name ends with `suffix` begins.
size_t u16_at(const std::string& bytes, size_t at) {
  return static_cast<uint8_t>(bytes[at]) | static_cast<uint8_t>(bytes[at + 1]) << 8;
}

size_t zip_structure(const std::string& bytes, const std::string& signature, const std::string& suffix) {
  const size_t name_at = signature == "PK\x03\x04" ? 30 : 46, length_at = signature == "PK\x03\x04" ? 26 : 28;
  for (size_t at = bytes.find(signature); at != std::string::npos; at = bytes.find(signature, at + 1)) {
    const std::string name = bytes.substr(at + name_at, u16_at(bytes, at + length_at));
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return at;
  }
  ADD_FAILURE() << "no " << suffix;
  return 0;
}

// LibTorch's reader skips each record's CRC-32 and would inflate a deflated record: a flipped byte loaded as another
// value, and a tiny file could inflate to gigabytes (issue 13).
TEST(TorchBin, DamagedZipRecordsAreRefusedNotLoaded) {
  TempDir dir;
  const std::string sound = testing::read_file(bin_of("single"));
  auto expect_refused = [&](std::string bytes, const std::string& needle, bool metadata_too) {
    const fs::path file = dir / "damaged.bin";
    fs::remove(file);
    testing::write_file(file, bytes);
    EXPECT_TRUE(fails_with([&] { read_torch_bin(file); }, ErrorCode::kCorruptCheckpoint, {file.string(), needle}));
    if (metadata_too) {
      EXPECT_TRUE(
          fails_with([&] { read_torch_bin_metadata(file); }, ErrorCode::kCorruptCheckpoint, {file.string(), needle}));
    }
    EXPECT_FALSE(verify_checkpoint(file).problems.empty()) << needle;
  };
  {
    std::string flipped = sound;
    const size_t header = zip_structure(sound, "PK\x03\x04", "/data/0");
    const size_t data = header + 30 + u16_at(sound, header + 26) + u16_at(sound, header + 28);
    flipped[data + 5] ^= 0x10;  // one bit of one float
    expect_refused(flipped, "record 'data/0' fails its CRC-32 check", false);
  }
  {
    std::string wrong_crc = sound;
    wrong_crc[zip_structure(sound, "PK\x01\x02", "/data.pkl") + 16] ^= 1;
    expect_refused(wrong_crc, "record 'data.pkl' fails its CRC-32 check", true);
  }
  {
    std::string deflated = sound;
    deflated[zip_structure(sound, "PK\x01\x02", "/data/0") + 10] = 8;  // stored bytes relabelled as deflate
    expect_refused(deflated, "is compressed (method 8", true);
  }
  {
    std::string at_zero = sound;  // the directory's offset, in the end record and in the zip64 end record
    const size_t end = at_zero.rfind("PK\x05\x06"), zip64 = at_zero.rfind("PK\x06\x06");
    std::fill_n(at_zero.begin() + end + 16, 4, '\0');
    if (zip64 != std::string::npos) std::fill_n(at_zero.begin() + zip64 + 48, 8, '\0');
    expect_refused(at_zero, "central directory entry 0 at byte 0 is damaged", true);
  }
}

TEST(TorchBin, RandomCorruptionIsAnErrorNeverACrash) {
  const std::string sound = testing::read_file(bin_of("single"));
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
  for (size_t length : {size_t{0}, size_t{3}, size_t{4}, sound.size() / 3, sound.size() - 1}) {
    testing::write_file(dir / "short.bin", sound.substr(0, length));
    EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "short.bin"); }, ErrorCode::kCorruptCheckpoint,
                           {(dir / "short.bin").string()}))
        << length << " bytes";
  }
}

// The archive the fixture script writes by hand is read like any torch.save file: the control for the next test.
TEST(TorchBin, HandWrittenArchiveWithAnHonestStridedViewMatchesPyTorch) {
  std::vector<BinTensor> tensors = read_torch_bin(bin_of("crafted_ok"));
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors[0].shape, (std::vector<int64_t>{2, 3}));
  // values[k] = 1.5 k - 4 for a 12-float storage; the view is offset 2, strides (1, 4): v[i][j] = values[2 + i + 4 j].
  for (size_t i = 0; i < 2; ++i) {
    for (size_t j = 0; j < 3; ++j) EXPECT_EQ(element<float>(tensors[0], i * 3 + j), 1.5f * (2 + i + 4 * j) - 4);
  }
  expect_same_digests(digests_of(tensors), expected("crafted_ok"));
}

// A hostile or damaged archive may describe a view that reaches past its storage, or a storage record shorter than
// the pickle declares. Reading it must be an error naming the file, never an out-of-bounds read.
TEST(TorchBinDeathTest, ViewsPastTheirStorageAndShortStorageRecordsAreRefusedNotReadOutOfBounds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // LibTorch has threads: re-execute rather than fork
  const fs::path oob = bin_of("oob_view");         // a 3-float storage seen as 1 << 24 floats
  EXPECT_REFUSED_WITHOUT_CRASHING(read_torch_bin(oob), {oob.string(), "'w'"});
  EXPECT_REFUSED_WITHOUT_CRASHING(read_torch_bin_metadata(oob), {oob.string(), "'w'"});  // the pickle alone shows it
  const fs::path short_record = bin_of("short_record");  // 16 bytes stored, 1 << 20 floats declared
  EXPECT_REFUSED_WITHOUT_CRASHING(read_torch_bin(short_record), {short_record.string(), "'w'"});
  // The catalog reads the pickle alone, and a load reserves shared memory by its storage sizes: even then a storage
  // larger than the whole file is refused.
  EXPECT_REFUSED_WITHOUT_CRASHING(read_torch_bin_metadata(short_record),
                                  {short_record.string(), "'w'", "claims a storage of 4194304 bytes"});
  // One float repeated by stride 0 into 4 GB: what it would be copied out to must be justified by the file.
  const fs::path bomb = bin_of("expanded_bomb");
  EXPECT_REFUSED_WITHOUT_CRASHING(read_torch_bin(bomb), {bomb.string(), "'w'", "more than the whole file"});
  EXPECT_REFUSED_WITHOUT_CRASHING(read_torch_bin_metadata(bomb), {bomb.string(), "'w'", "more than the whole file"});
  for (const char* fixture : {"oob_view", "short_record", "expanded_bomb"}) {
    EXPECT_REFUSED_WITHOUT_CRASHING(
        {
          VerifyReport report = verify_checkpoint(kFixtures / fixture);
          if (!report.problems.empty()) throw Error(ErrorCode::kCorruptCheckpoint, report.problems.front());
        },
        {bin_of(fixture).string()})
        << fixture;
  }
}

// --- convert and write_torch_bin -------------------------------------------------------------------------------------

TEST(TorchBin, ConvertToSeveralSafetensorsShardsKeepsEveryDigestUntiesAndVerifies) {
  for (const char* name : {"all_cases", "sharded", "module"}) {
    SCOPED_TRACE(name);
    TempDir dir;
    ConvertOptions options;
    options.max_shard_size = 256;
    ConvertResult r = convert_checkpoint(kFixtures / name, dir / "st", options);
    EXPECT_EQ(r.tensors, expected(name).size());
    EXPECT_EQ(r.untied, 1u);  // each holds one tied pair, written as two separate tensors
    EXPECT_EQ(r.cast, 0u);
    const size_t shard_files = std::count_if(r.files.begin(), r.files.end(),
                                             [](const fs::path& f) { return f.extension() == ".safetensors"; });
    EXPECT_GE(shard_files, 2u);
    EXPECT_EQ(r.files.size(), shard_files + 1) << "the shards and model.safetensors.index.json";
    VerifyReport report = verify_checkpoint(dir / "st");
    EXPECT_TRUE(report.problems.empty()) << report.problems.front();
    Catalog out = open_catalog(dir / "st");
    EXPECT_EQ(out.format, CheckpointFormat::kSafetensors);
    EXPECT_EQ(out.shards.size(), shard_files);
    for (const TensorInfo& t : out.tensors) EXPECT_EQ(t.tied_to, "") << t.name;
    uint64_t every = 0;
    for (const TensorInfo& t : out.tensors) every += t.nbytes();
    EXPECT_EQ(out.tensor_bytes(), every);  // the tied pair now counts twice: two copies on disk
    expect_same_digests(digest_checkpoint(out), expected(name));
  }
}

// One tensor of every dtype LibTorch 1.13 and safetensors share, plus 0-dim and empty ones, with bytes that make
// a wrong offset or byte order visible.
std::vector<TensorData> every_dtype() {
  struct Case {
    const char* name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"a.bool", DType::kBool, {3, 2}},   {"b.u8", DType::kU8, {7}},      {"c.i8", DType::kI8, {2, 2, 2}},
      {"d.i16", DType::kI16, {5}},        {"e.i32", DType::kI32, {2, 3}}, {"f.i64", DType::kI64, {4}},
      {"g.f16", DType::kF16, {3, 3}},     {"h.bf16", DType::kBF16, {6}},  {"i.f32", DType::kF32, {2, 5}},
      {"j.f64", DType::kF64, {3}},        {"k.scalar", DType::kI32, {}},  {"l.empty", DType::kF32, {0}},
      {"m.empty_2d", DType::kI64, {2, 0}}};
  std::vector<TensorData> out;
  uint8_t seed = 1;
  for (const Case& c : cases) {
    TensorData t;
    t.name = c.name;
    t.dtype = c.dtype;
    t.shape = c.shape;
    std::vector<uint8_t> bytes(t.nbytes());
    for (size_t i = 0; i < bytes.size(); ++i) {
      bytes[i] = c.dtype == DType::kBool ? (i * 7 + seed) % 3 == 0 : static_cast<uint8_t>(i * 37 + seed * 11);
    }
    ++seed;
    t.bytes = Bytes::from_vector(std::move(bytes));
    out.push_back(std::move(t));
  }
  return out;
}

TEST(TorchBin, WriteTorchBinRoundTripsEveryDtypeBitExact) {
  TempDir dir;
  const std::vector<TensorData> written = every_dtype();
  write_torch_bin(dir / "pytorch_model.bin", written);
  std::vector<BinTensor> back = read_torch_bin(dir / "pytorch_model.bin");
  ASSERT_EQ(back.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {  // every_dtype() is already sorted by name
    SCOPED_TRACE(written[i].name);
    EXPECT_EQ(back[i].name, written[i].name);
    EXPECT_EQ(back[i].dtype, written[i].dtype);
    EXPECT_EQ(back[i].shape, written[i].shape);
    EXPECT_EQ(back[i].tied_to, "");
    EXPECT_EQ(bytes_of(back[i].bytes), bytes_of(written[i].bytes));
  }
}

// F8 and U16/U32/U64 have no torch.<Type>Storage class in PyTorch: whatever LibTorch is linked, writing them to a
// .bin is refused, naming the tensor, and nothing is written.
TEST(TorchBin, WriteTorchBinRefusesDtypesPyTorchCannotLoadFromABin) {
  TempDir dir;
  for (DType dtype : {DType::kF8_E4M3, DType::kF8_E5M2, DType::kU16, DType::kU32, DType::kU64}) {
    std::vector<TensorData> tensors = every_dtype();
    TensorData t;
    t.name = "z.codes";
    t.dtype = dtype;
    t.shape = {4};
    t.bytes = Bytes::from_vector(std::vector<uint8_t>(t.nbytes(), 7));
    tensors.push_back(std::move(t));
    try {
      write_torch_bin(dir / "pytorch_model.bin", tensors);
      ADD_FAILURE() << dtype_name(dtype) << " was written";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("tensor 'z.codes': dtype " + std::string(dtype_name(dtype)) +
                                           " cannot go into a torch .bin"),
                std::string::npos)
          << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "pytorch_model.bin"));
  }
}

TEST(TorchBin, WrittenBinLoadsInPyTorchWithShardcastsDigests) {
  TempDir dir;
  const std::vector<TensorData> written = every_dtype();
  write_torch_bin(dir / "pytorch_model.bin", written);
  const std::vector<std::string> mine = digests_of(written);
  expect_same_digests(digest_checkpoint(open_catalog(dir.path())), mine);
  std::vector<std::string> theirs;
  ASSERT_NO_FATAL_FAILURE(pytorch_digests({dir / "pytorch_model.bin"}, /*weights_only=*/false, &theirs));
  expect_same_digests(theirs, mine);
}

// torch.load's default is weights_only=True from PyTorch 2.6: a written .bin may hold nothing but tensors, storages
// and plain containers (no torch.jit._pickle.restore_type_tag, which LibTorch's pickler adds to tag a Dict's type).
TEST(TorchBin, WrittenBinLoadsWithTorchLoadWeightsOnly) {
  TempDir dir;
  const std::vector<TensorData> written = every_dtype();
  write_torch_bin(dir / "pytorch_model.bin", written);
  const std::vector<std::string> mine = digests_of(written);
  std::vector<std::string> theirs;
  ASSERT_NO_FATAL_FAILURE(pytorch_digests({dir / "pytorch_model.bin"}, /*weights_only=*/true, &theirs));
  expect_same_digests(theirs, mine);
}

TEST(TorchBin, AllCasesRewrittenWithWriteTorchBinLoadInPyTorchUnchanged) {
  TempDir dir;
  std::vector<BinTensor> tensors = read_torch_bin(bin_of("all_cases"));
  std::vector<TensorData> data(tensors.begin(), tensors.end());
  write_torch_bin(dir / "pytorch_model.bin", data);
  std::vector<std::string> theirs;
  ASSERT_NO_FATAL_FAILURE(pytorch_digests({dir / "pytorch_model.bin"}, /*weights_only=*/false, &theirs));
  expect_same_digests(theirs, expected("all_cases"));
  expect_same_digests(digest_checkpoint(open_catalog(dir.path())), expected("all_cases"));
}

TEST(TorchBin, WriteTorchBinRefusesWrongByteCountsAndDtypesThisLibTorchLacks) {
  TempDir dir;
  TensorData short_bytes;
  short_bytes.name = "short";
  short_bytes.dtype = DType::kF32;
  short_bytes.shape = {4};
  short_bytes.bytes = Bytes::from_vector(std::vector<uint8_t>(15));
  EXPECT_TRUE(fails_with([&] { write_torch_bin(dir / "a.bin", {short_bytes}); }, ErrorCode::kInvalidArgument,
                         {"'short'", "15 bytes"}));

  TensorData f8;
  f8.name = "fp8.weight";
  f8.dtype = DType::kF8_E4M3;
  f8.shape = {2};
  f8.bytes = Bytes::from_vector(std::vector<uint8_t>(2));
  try {
    write_torch_bin(dir / "b.bin", {f8});
    // A LibTorch with float8 (2.1+) writes it; then it must come back as it went in.
    std::vector<BinTensor> back = read_torch_bin(dir / "b.bin");
    ASSERT_EQ(back.size(), 1u);
    EXPECT_EQ(back[0].dtype, DType::kF8_E4M3);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_CONTAINS(e.what(), "'fp8.weight'");
    EXPECT_CONTAINS(e.what(), "F8_E4M3");
    EXPECT_FALSE(fs::exists(dir / "b.bin")) << "a refused write left a file behind";
  }
}

}  // namespace
}  // namespace shardcast
