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

void expect_refused(const std::string& stream, const std::string& why) {
  try {
    make_pickle_loadable_by_libtorch(stream);
    ADD_FAILURE() << "accepted " << ::testing::PrintToString(stream);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint);
    EXPECT_NE(std::string(e.what()).find("the pickle is malformed"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

TEST(PickleCompat, StreamsThatWouldUnderflowTheUnpicklerAreRefused) {
  for (const std::string& bad :
       {std::string("garbage"), std::string(), bytes({0x80, 2, 'Q', '.'}), bytes({0x80, 2, 'R', '.'}),
        bytes({0x80, 2, 0x85, '.'}), bytes({0x80, 2, '}', 'b', '.'}), bytes({0x80, 2, '(', 'K', 1, 'u', '.'}),
        bytes({0x80, 2, 'K', 1})}) {
    expect_refused(bad, "");
  }
}

// The audit's streams (issue 13), each of which crashed LibTorch 1.13's unpickler behind the earlier pre-check: that
// check took a MARK for a stack value, so TUPLE1/2, REDUCE and BINPERSID could "consume" one.
TEST(PickleCompat, AMarkIsNeverAValueToPop) {
  expect_refused(bytes({0x80, 2, '(', 0x85, '.'}), "needs 1 value(s) above the innermost MARK and finds 0");
  expect_refused(bytes({0x80, 2, '(', '(', 'R', '.'}), "needs 2 value(s)");
  expect_refused(bytes({0x80, 2, '(', 'Q', '.'}), "needs 1 value(s)");
  expect_refused(bytes({0x80, 2, '(', 'N', 'N', '(', 0x86, 'd', '.'}), "needs 2 value(s)");  // a stale mark
  expect_refused(bytes({0x80, 2, '(', 'N', 0x86, '.'}), "needs 2 value(s)");                 // once a bad free
  expect_refused(bytes({0x80, 2, '(', '.'}), "STOP with nothing on the stack");
  expect_refused(bytes({0x80, 2, '}', '(', 'K', 1, 'u', '.'}), "key without a value");  // SETITEMS reads past the end
  expect_refused(bytes({0x80, 2, '(', 'K', 1, 'd', '.'}), "key without a value");
  expect_refused(bytes({0x80, 2, 'N', 'e', '.'}), "needs a MARK");
  expect_refused(bytes({0x80, 2, '(', '(', 'e', '.'}), "no container below its MARK");
}

TEST(PickleCompat, NestingAndTheMemoAreBounded) {
  std::string deep = bytes({0x80, 2, 'N'}) + std::string(1'000'000, '\x85') + ".";  // TUPLE1 a million times
  expect_refused(deep, "values nest deeper than 32 levels");
  std::string shallow = bytes({0x80, 2, 'N'}) + std::string(30, '\x85') + ".";
  EXPECT_EQ(make_pickle_loadable_by_libtorch(shallow), shallow);
  // LONG_BINPUT 2^32 - 1 would grow LibTorch's memo to four billion entries.
  expect_refused(bytes({0x80, 2, 'N', 'r', 0xff, 0xff, 0xff, 0xff, '.'}), "memo id 4294967295 skips ahead");
  expect_refused(bytes({0x80, 2, 'h', 0, '.'}), "memo id 0 at byte 2 was never stored");
}

// A container memoized before it was filled comes back through BINGET as the same object: its depth is counted where
// it ends up, and a value already inside another may not change (review of issue 13's fix).
TEST(PickleCompat, TheMemoCannotHideNesting) {
  std::string lists = bytes({0x80, 2, ']', 'q', 0});
  for (int i = 0; i < 20; ++i) lists += bytes({']', 'q', 1, '(', 'h', 0, 'e', ']', 'q', 0, '(', 'h', 1, 'e'});
  expect_refused(lists + ".", "values nest deeper than 32 levels");
  expect_refused(bytes({0x80, 2, ']', 'q', 0, ']', '(', 'h', 0, 'e', 'h', 0, '(', 'N', 'e', '.'}),
                 "changes a value already inside another");
}

// LibTorch casts a storage id's second item to a dtype without a check, and each global it knows has assumptions of
// its own: only a state dict's globals pass, and a storage id must name a storage class.
TEST(PickleCompat, OnlyAStateDictsGlobalsAndStorageIdsPass) {
  const std::string persistent_id = bytes({0x80, 2, '(', 'X', 7, 0, 0, 0}) + "storage" +
                                    bytes({'J', 0xff, 0xff, 0xff, 0x7f}) + bytes({'X', 1, 0, 0, 0}) + "0" +
                                    bytes({'X', 3, 0, 0, 0}) + "cpu" + bytes({'K', 0, 't', 'Q', '.'});
  expect_refused(persistent_id, "the persistent id at byte");
  expect_refused(std::string("\x80\x02") + "ctorch._tensor\n_rebuild_from_type_v2\n(NN)}tR.",
                 "the global 'torch._tensor _rebuild_from_type_v2 ' at byte 2 is not one torch.save writes");
  expect_refused(std::string("\x80\x02") + "cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.", "the global 'posix system '");
  // restore_type_tag parses its type string recursively: only the one type a state dict has.
  const std::string restore = std::string("\x80\x02") + "ctorch.jit._pickle\nrestore_type_tag\n}";
  std::string unary = std::string(100'000, '~') + "int";
  std::string unary_string = "X";
  for (int i = 0; i < 4; ++i) unary_string += static_cast<char>((unary.size() >> (8 * i)) & 0xff);
  expect_refused(restore + unary_string + unary + "\x86R.", "is called with another type than Dict[str, Tensor]");
  const std::string dict_type = std::string("X\x11\x00\x00\x00", 5) + "Dict[str, Tensor]";
  EXPECT_NO_THROW(make_pickle_loadable_by_libtorch(restore + dict_type + "\x86R."));
}

TEST(PickleCompat, OnlyLibTorchsOpcodesAndProtocolTwoPass) {
  expect_refused(bytes({0x80, 4, 'N', '.'}), "does not start with PROTO 2");
  expect_refused(bytes({0x80, 2, 'N', 'a', '.'}), "opcode 0x61 at byte 3");  // APPEND: LibTorch reads APPENDS only
}

TEST(PickleCompat, TheStateOfTheStateDictMustBeADictAndItsKeyIsReserved) {
  // OrderedDict() with a BUILD whose state is an int: not what torch.save writes.
  const std::string ordered_dict =
      "\x80\x02"
      "ccollections\nOrderedDict\n)R";
  expect_refused(ordered_dict + "K\x01" + "b.", "BUILD gives the state dict a state that is not a dict");
  EXPECT_NO_THROW(make_pickle_loadable_by_libtorch(ordered_dict + "}b."));
  try {
    make_pickle_loadable_by_libtorch(bytes({0x80, 2, '}', 'X', 22, 0, 0, 0}) + kPickleStateKey + "K\x01s.");
    ADD_FAILURE() << "accepted a tensor under the reserved name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reserves"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardcast
