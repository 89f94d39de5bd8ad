// The malformed corpus (tests/corpus/make_malformed.py, written into the build tree by the malformed_corpus fixture):
// every case is rejected by verify with a message naming its file, and the catalog (what inspect and load open)
// either refuses it or, for defects only a full read finds, opens it; never a crash, and never slowly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/verify.h"
#include "core/error.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;

struct Case {
  fs::path path;
  std::string expected;  // a word the message must hold (case-insensitive), or empty
};

std::vector<Case> cases_from(const std::string& source) {
  const fs::path dir = SHARDCAST_CORPUS_DIR;
  std::ifstream manifest(dir / "MANIFEST.tsv");
  EXPECT_TRUE(manifest) << "no " << (dir / "MANIFEST.tsv") << ": the malformed_corpus fixture writes it";
  std::vector<Case> out;
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string path, from, expected;
    std::getline(fields, path, '\t');
    std::getline(fields, from, '\t');
    std::getline(fields, expected, '\t');
    if (from == source) out.push_back({dir / path, expected});
  }
  return out;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// The folder of the case ("017-index-nested-17") is in every path a message can name.
std::string case_folder(const Case& c) {
  return (fs::is_directory(c.path) ? c.path : c.path.parent_path()).filename().string();
}

void expect_rejected(const std::string& source, size_t at_least) {
  const std::vector<Case> cases = cases_from(source);
  EXPECT_GE(cases.size(), at_least);
  size_t refused_by_catalog = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path.string());
    const auto start = std::chrono::steady_clock::now();
    const VerifyReport report = verify_checkpoint(c.path);
    std::string messages;
    for (const std::string& p : report.problems) messages += p + "\n";
    EXPECT_FALSE(report.problems.empty()) << "accepted";
    EXPECT_NE(messages.find(case_folder(c)), std::string::npos) << "the message names no file:\n" << messages;
    if (!c.expected.empty()) {
      EXPECT_NE(lower(messages).find(lower(c.expected)), std::string::npos) << "expected '" << c.expected << "' in:\n"
                                                                            << messages;
    }
    try {
      open_catalog(c.path);
    } catch (const Error& e) {
      ++refused_by_catalog;
      EXPECT_NE(std::string(e.what()).find(case_folder(c)), std::string::npos) << e.what();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 10.0) << "a tiny file took " << seconds << " s";
  }
  std::printf("%s: %zu cases rejected by verify, %zu of them by the catalog already\n", source.c_str(), cases.size(),
              refused_by_catalog);
}

TEST(MalformedCorpus, EveryHandcraftedRuleCaseIsRejectedWithItsDefectNamed) {
  expect_rejected("rule", 80);
}

TEST(MalformedCorpus, EveryTruncationIsRejectedNamingTheFile) {
  expect_rejected("trunc", 100);
}

TEST(MalformedCorpus, EveryStructuralBitFlipIsRejectedNamingTheFile) {
  expect_rejected("flip", 300);
}

}  // namespace
}  // namespace shardcast
