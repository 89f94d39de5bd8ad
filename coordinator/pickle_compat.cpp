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

// What the scanner knows of one object. Shared by every reference to it (the stack and the memo hold its id), so a
// container filled after a BINGET of it is the same container.
struct Object {
  uint32_t depth = 1;
  bool sealed = false;              // inside another value: torch.save never changes it after that
  bool dict = false;                // a dict (EMPTY_DICT, DICT, OrderedDict()): the only state BUILD may apply
  bool ordered_dict_class = false;  // the global collections.OrderedDict
  bool ordered_dict = false;        // a dict built by calling it
  bool restore_type_tag = false;    // the global torch.jit._pickle.restore_type_tag
  bool storage_class = false;       // a global torch.<Type>Storage
  bool dict_type_string = false;    // the string "Dict[str, Tensor]"
  bool restore_arguments = false;   // a pair (value, "Dict[str, Tensor]")
  bool persistent_id = false;       // a 5-tuple whose second item is a storage class: what BINPERSID may read
};

// A reference on the unpickler's stack: the object, and where in the stream its construction began (a MARK put in
// front of it lands there).
struct Value {
  size_t start;
  size_t object;
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
// The globals a torch.save state dict uses, and so all LibTorch is given: each other global LibTorch knows has its own
// assumptions about the stack (restore_type_tag parses any type string recursively; _rebuild_from_type_v2 calls a
// global that may not exist).
constexpr std::string_view kRebuildTensor = "torch._utils\n_rebuild_tensor_v2\n";
constexpr std::string_view kStorageClasses[] = {
    "torch\nFloatStorage\n", "torch\nDoubleStorage\n", "torch\nHalfStorage\n",         "torch\nBFloat16Storage\n",
    "torch\nLongStorage\n",  "torch\nIntStorage\n",    "torch\nShortStorage\n",        "torch\nCharStorage\n",
    "torch\nByteStorage\n",  "torch\nBoolStorage\n",   "torch\nComplexFloatStorage\n", "torch\nComplexDoubleStorage\n",
};
constexpr std::string_view kDictType = "Dict[str, Tensor]";

constexpr std::string_view kOrderedDict = "collections\nOrderedDict\n";
// LibTorch's restore_type_tag(obj, type) returns obj: calling it with ({}, "Dict[str, Tensor]") yields a dict.
constexpr std::string_view kRestoreTypeTag = "torch.jit._pickle\nrestore_type_tag\n";
const std::string kDictArguments = std::string("}X\x11\x00\x00\x00", 6) + "Dict[str, Tensor]" + "\x86";

// Follows the stream exactly as LibTorch's Unpickler::readInstruction does, opcode for opcode, with every check that
// unpickler omits: no pop below the innermost mark (Python's rule, which torch.save's streams keep), marks and memo
// entries that exist, even key/value runs, bounded nesting and memo, no change to a value once it is inside another,
// only the globals of a state dict, and storage ids whose dtype is a storage class. Only LibTorch's opcodes pass;
// anything that passes cannot take LibTorch's stack, memo or dtype table out of bounds, or recurse without bound.
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
          object().dict = true;
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
          push(at);
          object().dict_type_string = p_.substr(at + 5, pos_ - at - 5) == kDictType;
          break;
        }
        case 'c': {  // GLOBAL
          const size_t name = pos_;
          if (!skip_line() || !skip_line()) return false;
          const std::string_view global = p_.substr(name, pos_ - name);
          push(at);
          if (global == kOrderedDict) {
            object().ordered_dict_class = true;
            edits.push_back({name, 0, kOrderedDict.size(), std::string(kRestoreTypeTag)});
          } else if (global == kRestoreTypeTag) {
            object().restore_type_tag = true;
          } else if (std::find(std::begin(kStorageClasses), std::end(kStorageClasses), global) !=
                     std::end(kStorageClasses)) {
            object().storage_class = true;
          } else if (global != kRebuildTensor) {
            std::string shown(global);
            std::replace(shown.begin(), shown.end(), '\n', ' ');
            return fail(
                fmt::format("the global '{}' at byte {} is not one torch.save writes for a state dict", shown, at));
          }
          break;
        }
        case 'q':  // BINPUT
          if (!skip(1)) return false;
          if (!memoize(at, argument(1))) return false;
          break;
        case 'r':  // LONG_BINPUT
          if (!skip(4)) return false;
          if (!memoize(at, argument(4))) return false;
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
        case 'Q':  // BINPERSID: a storage from its id ("storage", torch.<Type>Storage, key, location, numel)
          // LibTorch casts the id's second item to a dtype unchecked: only a storage class may be there.
          if (available() >= 1 && !objects_[stack_.back().object].persistent_id) {
            return fail(fmt::format("the persistent id at byte {} is not a storage id of torch.save", at));
          }
          if (!combine(at, 1)) return false;
          break;
        case 0x81:  // NEWOBJ: LibTorch pops the argument tuple and leaves the class for BUILD
          if (!pop(at, 1)) return false;
          break;
        case 'R': {  // REDUCE: callable args -> result
          if (available() < 2) return fail_underflow(at, 2);
          const Value args_value = stack_.back();
          const Object callable = objects_[stack_[stack_.size() - 2].object], args = objects_[args_value.object];
          if (callable.restore_type_tag && !args.restore_arguments) {
            return fail(fmt::format("restore_type_tag at byte {} is called with another type than {}", at, kDictType));
          }
          if (callable.ordered_dict_class) {
            // OrderedDict() -> restore_type_tag({}, "Dict[str, Tensor]"); torch.save only writes OrderedDict().
            if (args_value.start + 1 != at || p_[args_value.start] != ')') {
              return fail("collections.OrderedDict is called with arguments; torch.save writes OrderedDict()");
            }
            edits.push_back({args_value.start, 0, 1, kDictArguments});
          }
          if (!combine(at, 2)) return false;
          object().ordered_dict = callable.ordered_dict_class;
          object().dict = callable.ordered_dict_class || callable.restore_type_tag;
          break;
        }
        case 'b': {  // BUILD: state applied to the object below
          if (available() < 2) return fail_underflow(at, 2);
          const Value state = stack_.back();
          const Value object = stack_[stack_.size() - 2];
          if (objects_[object.object].ordered_dict) {
            // An OrderedDict's state is its attribute dict ({"_metadata": ...}); anything else is not torch.save's.
            if (!objects_[state.object].dict) return fail("BUILD gives the state dict a state that is not a dict");
            // dict state BUILD -> dict MARK kPickleStateKey state SETITEMS
            const std::string key(kPickleStateKey);
            std::string insert = "(X";
            for (int i = 0; i < 4; ++i) insert += static_cast<char>((key.size() >> (8 * i)) & 0xff);
            edits.push_back({state.start, 1, 0, insert + key});
            edits.push_back({at, 2, 1, "u"});
          }
          if (!nest(at, object, state)) return false;
          stack_.pop_back();
          break;
        }
        case 's': {  // SETITEM: dict key value -> dict
          if (available() < 3) return fail_underflow(at, 3);
          const Value dict = stack_[stack_.size() - 3];
          if (!nest(at, dict, stack_[stack_.size() - 2]) || !nest(at, dict, stack_.back())) return false;
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
  void push(size_t at) {
    stack_.push_back({at, objects_.size()});
    objects_.emplace_back();
  }
  Object& object() { return objects_[stack_.back().object]; }
  bool pop(size_t at, size_t n) {
    if (available() < n) return fail_underflow(at, n);
    stack_.resize(stack_.size() - n);
    return true;
  }
  // Makes `outer` contain `inner`, refusing nesting past kMaxDepth. A container already inside another value is never
  // changed by torch.save: refusing that keeps every depth final once counted (and rules out cycles).
  bool nest(size_t at, const Value& outer, const Value& inner) {
    Object& o = objects_[outer.object];
    Object& i = objects_[inner.object];
    if (o.sealed) return fail(fmt::format("the opcode at byte {} changes a value already inside another", at));
    i.sealed = true;
    o.depth = std::max(o.depth, i.depth + 1);
    return o.depth <= kMaxDepth || fail(fmt::format("values nest deeper than {} levels", kMaxDepth));
  }
  // Pops n values and pushes one that holds them, starting where the first of them did.
  bool combine(size_t at, size_t n) {
    if (available() < n) return fail_underflow(at, n);
    const size_t first = stack_.size() - n;
    const Value built{n ? stack_[first].start : at, objects_.size()};
    objects_.emplace_back();
    // A pair (value, "Dict[str, Tensor]") may go to restore_type_tag.
    objects_[built.object].restore_arguments = n == 2 && objects_[stack_[first + 1].object].dict_type_string;
    for (size_t i = first; i < stack_.size(); ++i) {
      if (!nest(at, built, stack_[i])) return false;
    }
    stack_.resize(first);
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
    const Value built{mark.position, objects_.size()};
    objects_.emplace_back();
    objects_[built.object].dict = dict;
    objects_[built.object].persistent_id =
        !dict && stack_.size() - mark.stack_size == 5 && objects_[stack_[mark.stack_size + 1].object].storage_class;
    for (size_t i = mark.stack_size; i < stack_.size(); ++i) {
      if (!nest(at, built, stack_[i])) return false;
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
    const Value container = stack_[mark.stack_size - 1];
    for (size_t i = mark.stack_size; i < stack_.size(); ++i) {
      if (!nest(at, container, stack_[i])) return false;
    }
    stack_.resize(mark.stack_size);
    return true;
  }
  // Python's pickler numbers memo entries 0, 1, 2, ...: an id past the next one would make LibTorch grow its memo to
  // that size (4 billion entries for one LONG_BINPUT).
  bool memoize(size_t at, uint64_t id) {
    if (available() < 1) return fail_underflow(at, 1);
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
  std::vector<Object> objects_;  // by id, one per value ever pushed: bounded by the stream's length
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
