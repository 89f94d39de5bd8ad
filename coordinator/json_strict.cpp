#include "coordinator/json_strict.h"

#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {

using nlohmann::json;

// Checkpoint JSON is two or three levels deep; deeper input is refused before anything recurses over it.
constexpr size_t kMaxDepth = 16;
constexpr size_t kMaxMessage = 300;

// Builds the document from nlohmann's SAX events, refusing a duplicate key or a 17th level of nesting the moment it
// arrives. Each value is placed once, so parsing is linear in the text: a header of 200,000 tensors is one pass
// (nlohmann's callback parser, used before, rescanned the enclosing object on every key and went quadratic).
class StrictBuilder : public nlohmann::json_sax<json> {
 public:
  StrictBuilder(const std::string& label, std::string_view what) : label_(label), what_(what) {}

  json take() { return std::move(root_); }

  bool null() override { return place(nullptr); }
  bool boolean(bool value) override { return place(value); }
  bool number_integer(number_integer_t value) override { return place(value); }
  bool number_unsigned(number_unsigned_t value) override { return place(value); }
  bool number_float(number_float_t value, const string_t&) override { return place(value); }
  bool string(string_t& value) override { return place(std::move(value)); }
  bool binary(binary_t& value) override { return place(json::binary(std::move(value))); }

  bool start_object(std::size_t) override { return open(json::value_t::object); }
  bool start_array(std::size_t) override { return open(json::value_t::array); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& key) override {
    auto [it, inserted] = open_.back()->get_ref<json::object_t&>().emplace(std::move(key), nullptr);
    if (!inserted) fail(fmt::format("has the key '{}' more than once", it->first));
    slot_ = &it->second;
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    // Syntax errors, and numbers past a double's range (1e400, a million digits): never an "internal error". The
    // message quotes the offending token, which may be a million characters long.
    std::string what = e.what();
    if (what.size() > kMaxMessage) what = what.substr(0, kMaxMessage) + "...";
    fail(fmt::format("is not valid JSON: {}", what));
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': {} {}", label_, what_, why));
  }

  // Puts the value where the document is at (the root, the open array's end, or the key just read); returns it.
  template <typename Value>
  json* put(Value&& value) {
    if (open_.empty()) return &(root_ = json(std::forward<Value>(value)));
    if (open_.back()->is_array()) {
      return &open_.back()->get_ref<json::array_t&>().emplace_back(std::forward<Value>(value));
    }
    return &(*slot_ = json(std::forward<Value>(value)));
  }
  template <typename Value>
  bool place(Value&& value) {
    put(std::forward<Value>(value));
    return true;
  }

  bool open(json::value_t type) {
    if (open_.size() == kMaxDepth) fail(fmt::format("nests deeper than {} levels", kMaxDepth));
    open_.push_back(put(type));
    return true;
  }

  bool close() {
    open_.pop_back();
    return true;
  }

  const std::string& label_;
  std::string_view what_;
  json root_;
  std::vector<json*> open_;  // the containers being filled, outermost first
  json* slot_ = nullptr;     // the value of the object key just read
};

}  // namespace

nlohmann::json parse_json_strict(std::string_view text, const std::string& label, std::string_view what) {
  // nlohmann stops at a NUL as at the end of the input, so "{...}\0anything" would pass; JSON text holds no NUL.
  if (const void* nul = std::memchr(text.data(), '\0', text.size())) {
    throw Error(ErrorCode::kCorruptCheckpoint,
                fmt::format("'{}': {} has a NUL byte at byte {} of {} (JSON text holds none; padding is spaces)", label,
                            what, static_cast<const char*>(nul) - text.data(), text.size()));
  }
  StrictBuilder builder(label, what);
  json::sax_parse(text.begin(), text.end(), &builder);  // strict: only whitespace may follow the value
  return builder.take();
}

}  // namespace shardcast
