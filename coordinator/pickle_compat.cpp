#include "coordinator/pickle_compat.h"

#include <fmt/format.h>

#include "core/error.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

namespace shardcast {
namespace {

// A value on the unpickler's stack: where in the stream its construction began (a MARK put in front of it lands
// there), how deeply it nests, and what the OrderedDict rewrite needs to know about it.
struct Value {
  size_t start;
  uint32_t depth = 1;
  bool dict = false;                // a dict (EMPTY_DICT, DICT, OrderedDict()): the only state BUILD may apply
  bool ordered_dict_class = false;  // the global collections.OrderedDict
  bool ordered_dict = false;        // a dict built by calling it
};

// LibTorch's unpickler keeps marks apart from the stack, as stack sizes.
struct Mark {
  size_t stack_size;
  size_t position;  // of the MARK opcode: where a value built from the mark begins
};

// Replace `length` bytes at `position` with `insert` (length 0: a pure insertion).
struct Edit {
  size_t position;
  int order;  // among insertions at one position: OrderedDict arguments (0) before a MARK (1)
  size_t length;
  std::string insert;
};

// A state dict nests a handful of levels (dict -> rebuild call -> argument tuple -> size tuple). Deeper streams are
// refused: LibTorch builds and frees nested values recursively and would overflow its stack.
constexpr uint32_t kMaxDepth = 32;
// Strings become types through restore_type_tag ("Dict[str, Tensor]"), parsed recursively by LibTorch.
constexpr int kMaxTypeNesting = 16;

constexpr std::string_view kOrderedDict = "collections\nOrderedDict\n";
// LibTorch's restore_type_tag(obj, type) returns obj: calling it with ({}, "Dict[str, Tensor]") yields a dict.
constexpr std::string_view kRestoreTypeTag = "torch.jit._pickle\nrestore_type_tag\n";
const std::string kDictArguments = std::string("}X\x11\x00\x00\x00", 6) + "Dict[str, Tensor]" + "\x86";

// Follows the stream exactly as LibTorch's Unpickler::readInstruction does, opcode for opcode, with every check that
// unpickler omits: no pop below the innermost mark (Python's rule, which torch.save's streams keep), marks and memo
// entries that exist, even key/value runs, bounded nesting and memo. Only LibTorch's opcodes pass; anything that
// passes cannot take LibTorch's stack or memo out of bounds.
class Scanner {
 public:
  explicit Scanner(std::string_view p) : p_(p) {}

  std::vector<Edit> edits;
  std::string error;

  bool run() {
    if (p_.size() < 2 || static_cast<unsigned char>(p_[0]) != 0x80 || p_[1] != 2) {
      return fail("it does not start with PROTO 2, as torch.save's pickles do");
    }
    pos_ = 2;
    while (pos_ < p_.size()) {
      const size_t at = pos_;
      const auto op = static_cast<unsigned char>(p_[pos_++]);
      switch (op) {
        case '.':  // STOP: the result is the top of the stack
          return available() >= 1 || fail("STOP with nothing on the stack");
        case '(': marks_.push_back({stack_.size(), at}); break;  // MARK
        case 'N':                                                // NONE
        case 0x88:                                               // NEWTRUE
        case 0x89:                                               // NEWFALSE
        case ')':                                                // EMPTY_TUPLE
        case ']': push(at); break;                               // EMPTY_LIST
        case '}':                                                // EMPTY_DICT
          push(at);
          stack_.back().dict = true;
          break;
        case 'K':  // BININT1
          if (!skip(1)) return false;
          push(at);
          break;
        case 'M':  // BININT2
          if (!skip(2)) return false;
          push(at);
          break;
        case 'J':  // BININT
          if (!skip(4)) return false;
          push(at);
          break;
        case 'G':  // BINFLOAT
          if (!skip(8)) return false;
          push(at);
          break;
        case 0x8a:  // LONG1
          if (!skip_length(1)) return false;
          push(at);
          break;
        case 'X': {  // BINUNICODE
          if (!skip_length(4)) return false;
          if (nesting(p_.substr(at + 5, pos_ - at - 5)) > kMaxTypeNesting) {
            return fail(
                fmt::format("a string nests brackets deeper than {} levels (a type string LibTorch would "
                            "parse recursively)",
                            kMaxTypeNesting));
          }
          push(at);
          break;
        }
        case 'c': {  // GLOBAL
          const size_t name = pos_;
          if (!skip_line() || !skip_line()) return false;
          push(at);
          if (p_.substr(name, pos_ - name) == kOrderedDict) {
            stack_.back().ordered_dict_class = true;
            edits.push_back({name, 0, kOrderedDict.size(), std::string(kRestoreTypeTag)});
          }
          break;
        }
        case 'q':  // BINPUT
          if (!skip(1)) return false;
          if (!memoize(argument(1))) return false;
          break;
        case 'r':  // LONG_BINPUT
          if (!skip(4)) return false;
          if (!memoize(argument(4))) return false;
          break;
        case 'h':  // BINGET
          if (!skip(1)) return false;
          if (!recall(at, argument(1))) return false;
          break;
        case 'j':  // LONG_BINGET
          if (!skip(4)) return false;
          if (!recall(at, argument(4))) return false;
          break;
        case 't':  // TUPLE
        case 'l':  // LIST
          if (!collapse_to_mark(at, 1, false)) return false;
          break;
        case 'd':  // DICT
          if (!collapse_to_mark(at, 2, true)) return false;
          break;
        case 'e':  // APPENDS: into the list below the mark
          if (!into_object_below_mark(at, 1)) return false;
          break;
        case 'u':  // SETITEMS: into the dict below the mark
          if (!into_object_below_mark(at, 2)) return false;
          break;
        case 0x85:  // TUPLE1
          if (!combine(at, 1)) return false;
          break;
        case 0x86:  // TUPLE2
          if (!combine(at, 2)) return false;
          break;
        case 0x87:  // TUPLE3
          if (!combine(at, 3)) return false;
          break;
        case 'Q':  // BINPERSID: a storage from its (tuple) id
          if (!combine(at, 1)) return false;
          break;
        case 0x81:  // NEWOBJ: LibTorch pops the argument tuple and leaves the class for BUILD
          if (!pop(at, 1)) return false;
          break;
        case 'R': {  // REDUCE: callable args -> result
          if (available() < 2) return fail_underflow(at, 2);
          const Value callable = stack_[stack_.size() - 2];
          const Value args = stack_.back();
          if (callable.ordered_dict_class) {
            // OrderedDict() -> restore_type_tag({}, "Dict[str, Tensor]"); torch.save only writes OrderedDict().
            if (args.start + 1 != at || p_[args.start] != ')') {
              return fail("collections.OrderedDict is called with arguments; torch.save writes OrderedDict()");
            }
            edits.push_back({args.start, 0, 1, kDictArguments});
          }
          if (!combine(at, 2)) return false;
          stack_.back().ordered_dict = stack_.back().dict = callable.ordered_dict_class;
          break;
        }
        case 'b': {  // BUILD: state applied to the object below
          if (available() < 2) return fail_underflow(at, 2);
          const Value state = stack_.back();
          Value& object = stack_[stack_.size() - 2];
          if (object.ordered_dict) {
            // An OrderedDict's state is its attribute dict ({"_metadata": ...}); anything else is not torch.save's.
            if (!state.dict) return fail("BUILD gives the state dict a state that is not a dict");
            // dict state BUILD -> dict MARK kPickleStateKey state SETITEMS
            const std::string key(kPickleStateKey);
            std::string insert = "(X";
            for (int i = 0; i < 4; ++i) insert += static_cast<char>((key.size() >> (8 * i)) & 0xff);
            edits.push_back({state.start, 1, 0, insert + key});
            edits.push_back({at, 2, 1, "u"});
          }
          if (!nest(object, state)) return false;
          stack_.pop_back();
          break;
        }
        case 's': {  // SETITEM: dict key value -> dict
          if (available() < 3) return fail_underflow(at, 3);
          Value& dict = stack_[stack_.size() - 3];
          if (!nest(dict, stack_[stack_.size() - 2]) || !nest(dict, stack_.back())) return false;
          edits.push_back({stack_[stack_.size() - 2].start, 1, 0, "("});
          edits.push_back({at, 2, 1, "u"});
          stack_.resize(stack_.size() - 2);
          break;
        }
        default:
          return fail(
              fmt::format("opcode 0x{:02x} at byte {} is not one LibTorch's unpickler reads (nor torch.save "
                          "writes)",
                          op, at));
      }
    }
    return fail("it has no STOP");
  }

  size_t position() const { return pos_; }

 private:
  bool fail(std::string why) {
    error = std::move(why);
    return false;
  }
  bool fail_underflow(size_t at, size_t needed) {
    return fail(fmt::format("the opcode at byte {} needs {} value(s) above the innermost MARK and finds {}", at, needed,
                            available()));
  }
  // Values above the innermost mark: what an opcode may pop.
  size_t available() const { return stack_.size() - (marks_.empty() ? 0 : marks_.back().stack_size); }
  void push(size_t at) { stack_.push_back({at}); }
  bool pop(size_t at, size_t n) {
    if (available() < n) return fail_underflow(at, n);
    stack_.resize(stack_.size() - n);
    return true;
  }
  // Makes `outer` contain `inner`, refusing nesting past kMaxDepth.
  bool nest(Value& outer, const Value& inner) {
    outer.depth = std::max(outer.depth, inner.depth + 1);
    return outer.depth <= kMaxDepth || fail(fmt::format("values nest deeper than {} levels", kMaxDepth));
  }
  // Pops n values and pushes one that holds them, starting where the first of them did.
  bool combine(size_t at, size_t n) {
    if (available() < n) return fail_underflow(at, n);
    Value built{n ? stack_[stack_.size() - n].start : at};
    for (size_t i = stack_.size() - n; i < stack_.size(); ++i) {
      if (!nest(built, stack_[i])) return false;
    }
    stack_.resize(stack_.size() - n);
    stack_.push_back(built);
    return true;
  }
  // TUPLE, LIST, DICT: the values above the innermost mark become one value in the mark's place.
  bool collapse_to_mark(size_t at, size_t group, bool dict) {
    if (marks_.empty()) return fail(fmt::format("the opcode at byte {} needs a MARK and there is none", at));
    const Mark mark = marks_.back();
    if ((stack_.size() - mark.stack_size) % group != 0) {
      return fail(fmt::format("the dict at byte {} has a key without a value", at));
    }
    Value built{mark.position};
    built.dict = dict;
    for (size_t i = mark.stack_size; i < stack_.size(); ++i) {
      if (!nest(built, stack_[i])) return false;
    }
    marks_.pop_back();
    stack_.resize(mark.stack_size);
    stack_.push_back(built);
    return true;
  }
  // APPENDS, SETITEMS: the values above the innermost mark go into the container just below it.
  bool into_object_below_mark(size_t at, size_t group) {
    if (marks_.empty()) return fail(fmt::format("the opcode at byte {} needs a MARK and there is none", at));
    const Mark mark = marks_.back();
    marks_.pop_back();
    const size_t fence = marks_.empty() ? 0 : marks_.back().stack_size;
    if (mark.stack_size <= fence) {  // the container must sit between the two marks
      return fail(fmt::format("the opcode at byte {} has no container below its MARK", at));
    }
    if ((stack_.size() - mark.stack_size) % group != 0) {
      return fail(fmt::format("the SETITEMS at byte {} has a key without a value", at));
    }
    Value& container = stack_[mark.stack_size - 1];
    for (size_t i = mark.stack_size; i < stack_.size(); ++i) {
      if (!nest(container, stack_[i])) return false;
    }
    stack_.resize(mark.stack_size);
    return true;
  }
  // Python's pickler numbers memo entries 0, 1, 2, ...: an id past the next one would make LibTorch grow its memo to
  // that size (4 billion entries for one LONG_BINPUT).
  bool memoize(uint64_t id) {
    if (available() < 1) return fail_underflow(pos_ - 1, 1);
    if (id > memo_.size()) {
      return fail(fmt::format("memo id {} skips ahead of the {} entries so far", id, memo_.size()));
    }
    if (id == memo_.size()) {
      memo_.push_back(stack_.back());
    } else {
      memo_[id] = stack_.back();
    }
    return true;
  }
  bool recall(size_t at, uint64_t id) {
    if (id >= memo_.size()) return fail(fmt::format("memo id {} at byte {} was never stored", id, at));
    stack_.push_back(memo_[id]);
    stack_.back().start = at;
    return true;
  }
  uint64_t argument(size_t width) const {
    uint64_t n = 0;
    for (size_t i = 0; i < width; ++i)
      n |= static_cast<uint64_t>(static_cast<unsigned char>(p_[pos_ - width + i])) << (8 * i);
    return n;
  }
  static int nesting(std::string_view text) {
    int depth = 0, deepest = 0;
    for (char c : text) {
      if (c == '[' || c == '(') deepest = std::max(deepest, ++depth);
      if ((c == ']' || c == ')') && depth > 0) --depth;
    }
    return deepest;
  }
  bool truncated() { return fail("it ends inside an opcode's argument"); }
  bool skip(size_t n) {
    if (p_.size() - pos_ < n) return truncated();
    pos_ += n;
    return true;
  }
  bool skip_length(size_t width) {
    if (p_.size() - pos_ < width) return truncated();
    uint64_t n = 0;
    for (size_t i = 0; i < width; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(p_[pos_ + i])) << (8 * i);
    pos_ += width;
    return skip(n);
  }
  bool skip_line() {
    size_t end = p_.find('\n', pos_);
    if (end == std::string_view::npos) return truncated();
    pos_ = end + 1;
    return true;
  }

  std::string_view p_;
  size_t pos_ = 0;
  std::vector<Value> stack_;
  std::vector<Mark> marks_;
  std::vector<Value> memo_;
};

}  // namespace

std::string make_pickle_loadable_by_libtorch(std::string_view pickle) {
  if (pickle.find(std::string_view(kPickleStateKey)) != std::string_view::npos) {
    throw Error(ErrorCode::kCorruptCheckpoint,
                "the pickle holds the name shardcast reserves for a dict's BUILD state (\\x01shardcast-build-state)");
  }
  Scanner scanner(pickle);
  if (!scanner.run()) {
    // LibTorch's unpickler does not check its stack, marks or memo: such a stream could crash the process.
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("the pickle is malformed: {} (stopped at byte {} of {})",
                                                           scanner.error, scanner.position(), pickle.size()));
  }
  if (scanner.edits.empty()) return std::string(pickle);
  std::vector<Edit>& edits = scanner.edits;
  std::sort(edits.begin(), edits.end(),
            [](const Edit& a, const Edit& b) { return std::tie(a.position, a.order) < std::tie(b.position, b.order); });
  std::string out;
  out.reserve(pickle.size() + 32 * edits.size());
  size_t copied = 0;  // pickle[0, copied) is in out
  for (const Edit& e : edits) {
    if (e.position < copied) return std::string(pickle);  // overlapping edits: not a stream torch.save writes
    out.append(pickle.substr(copied, e.position - copied));
    out += e.insert;
    copied = e.position + e.length;
  }
  out.append(pickle.substr(copied));
  return out;
}

}  // namespace shardcast
