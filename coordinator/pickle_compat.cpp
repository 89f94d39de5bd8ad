#include "coordinator/pickle_compat.h"

#include <fmt/format.h>

#include "core/error.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace shardcast {
namespace {

// Each stack entry remembers where in the stream its construction began, so a MARK can be put in front of it.
struct Entry {
  size_t start;
  bool mark;
  bool ordered_dict_class = false;  // the global collections.OrderedDict
  bool ordered_dict = false;        // a dict built by calling it
};

// Replace `length` bytes at `position` with `insert` (length 0: a pure insertion).
struct Edit {
  size_t position;
  int order;  // among insertions at one position: OrderedDict arguments (0) before a MARK (1)
  size_t length;
  std::string insert;
};

constexpr std::string_view kOrderedDict = "collections\nOrderedDict\n";
// LibTorch's restore_type_tag(obj, type) returns obj: calling it with ({}, "Dict[str, Tensor]") yields a dict.
constexpr std::string_view kRestoreTypeTag = "torch.jit._pickle\nrestore_type_tag\n";
const std::string kDictArguments = std::string("}X\x11\x00\x00\x00", 6) + "Dict[str, Tensor]" + "\x86";

class Scanner {
 public:
  explicit Scanner(std::string_view p) : p_(p) {}

  std::vector<Edit> edits;

  bool run() {
    while (pos_ < p_.size()) {
      const size_t at = pos_;
      const auto op = static_cast<unsigned char>(p_[pos_++]);
      switch (op) {
        case '.': return true;                          // STOP
        case '(': stack_.push_back({at, true}); break;  // MARK
        case '0':
          if (!pop(1)) return false;
          break;  // POP
        case '1':
          if (!pop_to_mark()) return false;
          break;  // POP_MARK
        case '2':
          if (stack_.empty()) return false;
          stack_.push_back(stack_.back());
          break;  // DUP
        // Push one value, with a fixed-size or length-prefixed argument.
        case 'N':
        case 0x88:
        case 0x89:
        case ')':
        case ']':
        case '}':
        case 0x8f:
        case 0x97: push(at); break;
        case 'K':
        case 0x82:
          if (!skip(1)) return false;
          push(at);
          break;
        case 'M':
        case 0x83:
          if (!skip(2)) return false;
          push(at);
          break;
        case 'J':
        case 0x84:
          if (!skip(4)) return false;
          push(at);
          break;
        case 'h':
          if (!skip(1)) return false;
          push_memo(at, argument(1));
          break;  // BINGET
        case 'j':
          if (!skip(4)) return false;
          push_memo(at, argument(4));
          break;  // LONG_BINGET
        case 'G':
          if (!skip(8)) return false;
          push(at);
          break;
        case 0x8a:
        case 'U':
        case 0x8c:
        case 'C':
          if (!skip_length(1)) return false;
          push(at);
          break;
        case 0x8b:
        case 'T':
        case 'X':
        case 'B':
          if (!skip_length(4)) return false;
          push(at);
          break;
        case 0x8d:
        case 0x8e:
        case 0x96:
          if (!skip_length(8)) return false;
          push(at);
          break;
        case 'I':
        case 'L':
        case 'S':
        case 'V':
        case 'F':
        case 'g':
        case 'P':
          if (!skip_line()) return false;
          push(at);
          break;
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
        // No stack effect.
        case 'q':
          if (!skip(1)) return false;
          memoize(argument(1));
          break;  // BINPUT
        case 'r':
          if (!skip(4)) return false;
          memoize(argument(4));
          break;  // LONG_BINPUT
        case 0x80:
          if (!skip(1)) return false;
          break;  // PROTO
        case 0x95:
          if (!skip(8)) return false;
          break;  // FRAME
        case 'p':
          if (!skip_line()) return false;
          break;  // PUT
        case 0x94:
        case 0x98:
          break;  // MEMOIZE, READONLY_BUFFER
        // Pop to mark, push the built value (it starts where the mark was).
        case 't':
        case 'l':
        case 'd':
        case 0x91:
        case 'o':
          if (!collapse_to_mark()) return false;
          break;
        case 'i':
          if (!skip_line() || !skip_line() || !collapse_to_mark()) return false;
          break;  // INST
        // Pop to mark into the object below, which stays.
        case 'e':
        case 'u':
        case 0x90:
          if (!pop_to_mark() || stack_.empty()) return false;
          break;  // into the object below
        case 'a':
          if (!pop(1)) return false;
          break;   // APPEND
        case 'b':  // BUILD: state applied to the object below
          if (stack_.size() < 2 || stack_.back().mark) return false;
          if (stack_[stack_.size() - 2].ordered_dict) {
            // dict state BUILD -> dict MARK kPickleStateKey state SETITEMS
            const std::string key(kPickleStateKey);
            std::string insert = "(X";
            for (int i = 0; i < 4; ++i) insert += static_cast<char>((key.size() >> (8 * i)) & 0xff);
            edits.push_back({stack_.back().start, 1, 0, insert + key});
            edits.push_back({at, 2, 1, "u"});
          }
          stack_.pop_back();
          break;
        case 'R': {  // REDUCE: callable args -> result
          if (stack_.size() < 2) return false;
          const Entry callable = stack_[stack_.size() - 2];
          const Entry args = stack_.back();
          if (callable.ordered_dict_class) {
            // OrderedDict() -> restore_type_tag({}, "Dict[str, Tensor]"); torch.save only writes OrderedDict().
            if (args.start + 1 != at || p_[args.start] != ')') return false;
            edits.push_back({args.start, 0, 1, kDictArguments});
          }
          if (!combine(2)) return false;
          stack_.back().ordered_dict = callable.ordered_dict_class;
          break;
        }
        case 0x85:
          if (!combine(1)) return false;
          break;  // TUPLE1
        case 0x86:
        case 0x81:
        case 0x93:
          if (!combine(2)) return false;
          break;  // TUPLE2, NEWOBJ, STACK_GLOBAL
        case 0x87:
        case 0x92:
          if (!combine(3)) return false;
          break;  // TUPLE3, NEWOBJ_EX
        case 'Q':
          if (!combine(1)) return false;
          break;   // BINPERSID
        case 's':  // SETITEM: dict key value -> dict
          if (stack_.size() < 3 || stack_[stack_.size() - 2].mark || stack_.back().mark) return false;
          edits.push_back({stack_[stack_.size() - 2].start, 1, 0, "("});
          edits.push_back({at, 2, 1, "u"});
          stack_.resize(stack_.size() - 2);
          break;
        default: return false;  // an opcode torch.save never writes
      }
    }
    return false;  // no STOP
  }

 private:
  void push(size_t at) { stack_.push_back({at, false}); }
  uint64_t argument(size_t width) const {
    uint64_t n = 0;
    for (size_t i = 0; i < width; ++i)
      n |= static_cast<uint64_t>(static_cast<unsigned char>(p_[pos_ - width + i])) << (8 * i);
    return n;
  }
  void memoize(uint64_t index) {
    if (!stack_.empty()) memo_[index] = stack_.back().ordered_dict_class;
  }
  void push_memo(size_t at, uint64_t index) {
    push(at);
    auto it = memo_.find(index);
    stack_.back().ordered_dict_class = it != memo_.end() && it->second;
  }
  bool skip(size_t n) {
    if (p_.size() - pos_ < n) return false;
    pos_ += n;
    return true;
  }
  bool skip_length(size_t width) {
    if (p_.size() - pos_ < width) return false;
    uint64_t n = 0;
    for (size_t i = 0; i < width; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(p_[pos_ + i])) << (8 * i);
    pos_ += width;
    return skip(n);
  }
  bool skip_line() {
    size_t end = p_.find('\n', pos_);
    if (end == std::string_view::npos) return false;
    pos_ = end + 1;
    return true;
  }
  bool pop(size_t n) {
    if (stack_.size() < n) return false;
    stack_.resize(stack_.size() - n);
    return true;
  }
  bool pop_to_mark() {
    while (!stack_.empty() && !stack_.back().mark) stack_.pop_back();
    if (stack_.empty()) return false;
    stack_.pop_back();
    return true;
  }
  bool collapse_to_mark() {
    while (!stack_.empty() && !stack_.back().mark) stack_.pop_back();
    if (stack_.empty()) return false;
    stack_.back().mark = false;  // the built value takes the mark's place and start
    return true;
  }
  // Pops n values and pushes one that starts where the first of them did.
  bool combine(size_t n) {
    if (stack_.size() < n) return false;
    size_t start = stack_[stack_.size() - n].start;
    stack_.resize(stack_.size() - n);
    push(start);
    return true;
  }

  std::string_view p_;
  size_t pos_ = 0;
  std::vector<Entry> stack_;
  std::map<uint64_t, bool> memo_;

 public:
  size_t position() const { return pos_; }

 private:  // memo index -> holds the OrderedDict class
};

}  // namespace

std::string make_pickle_loadable_by_libtorch(std::string_view pickle) {
  Scanner scanner(pickle);
  if (!scanner.run()) {
    // LibTorch's unpickler does not check its stack: a stream that underflows it would crash the process.
    throw Error(ErrorCode::kCorruptCheckpoint,
                fmt::format("the pickle is malformed (stack underflow, a missing MARK or STOP, or an opcode torch.save "
                            "never writes) near byte {} of {}",
                            scanner.position(), pickle.size()));
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
