// The pickle rewrite that lets LibTorch 1.13 read what torch.save writes, and its refusal of streams that would
// underflow LibTorch's unchecked stack.
#include <gtest/gtest.h>

#include "coordinator/pickle_compat.h"
#include "core/error.h"

namespace shardcast {
namespace {

std::string bytes(std::initializer_list<unsigned char> b) {
  return std::string(b.begin(), b.end());
}

TEST(PickleCompat, OneItemDictGetsAMarkAndSetitems) {
  // PROTO 2, EMPTY_DICT, 'a', 1, SETITEM, STOP -> MARK before the key, SETITEMS.
  const std::string one_item = bytes({0x80, 2, '}', 'X', 1, 0, 0, 0, 'a', 'K', 1, 's', '.'});
  const std::string expected = bytes({0x80, 2, '}', '(', 'X', 1, 0, 0, 0, 'a', 'K', 1, 'u', '.'});
  EXPECT_EQ(make_pickle_loadable_by_libtorch(one_item), expected);
}

TEST(PickleCompat, StreamsWithoutEditsPassUnchanged) {
  const std::string list = bytes({0x80, 2, ']', '(', 'K', 1, 'K', 2, 'e', '.'});
  EXPECT_EQ(make_pickle_loadable_by_libtorch(list), list);
}

TEST(PickleCompat, StreamsThatWouldUnderflowTheUnpicklerAreRefused) {
  for (const std::string& bad :
       {std::string("garbage"), std::string(), bytes({0x80, 2, 'Q', '.'}), bytes({0x80, 2, 'R', '.'}),
        bytes({0x80, 2, 0x85, '.'}), bytes({0x80, 2, '}', 'b', '.'}), bytes({0x80, 2, '(', 'K', 1, 'u', '.'}),
        bytes({0x80, 2, 'K', 1})}) {
    try {
      make_pickle_loadable_by_libtorch(bad);
      ADD_FAILURE() << "accepted " << ::testing::PrintToString(bad);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint);
      EXPECT_NE(std::string(e.what()).find("the pickle is malformed"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace shardcast
