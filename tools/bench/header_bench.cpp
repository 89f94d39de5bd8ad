#include "tools/bench/header_bench.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "coordinator/index.h"
#include "coordinator/safetensors.h"

namespace shardcast::bench {
namespace {

// Median of three runs of `parse`, in seconds.
template <typename Parse>
double median_seconds(Parse parse) {
  std::vector<double> runs;
  for (int i = 0; i < 3; ++i) {
    const auto start = std::chrono::steady_clock::now();
    parse();
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(runs.begin(), runs.end());
  return runs[1];
}

// The parser shardcast used before issue 13: nlohmann's callback parser, keys tracked per object. Kept here only to
// measure against; it grows quadratically with the number of keys in one object.
void parse_with_callback_parser(const std::string& text) {
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::object_start) open_objects.emplace_back();
    if (event == nlohmann::json::parse_event_t::object_end) open_objects.pop_back();
    if (event == nlohmann::json::parse_event_t::key) open_objects.back().insert(parsed.get<std::string>());
    return true;
  };
  const nlohmann::json parsed = nlohmann::json::parse(text, callback);
  if (parsed.is_discarded()) throw std::runtime_error("callback parser discarded the header");
}

}  // namespace

int run_header_bench(const HeaderBenchArgs& args) {
  nlohmann::ordered_json results = nlohmann::ordered_json::array();
  std::string table =
      "| tensors | header bytes | header parse s | index bytes | index parse s | header us/tensor | callback parser s "
      "(before) |\n|---|---|---|---|---|---|---|\n";
  fmt::print("{}", table);
  for (size_t n : args.tensors) {
    std::vector<SafetensorsEntry> entries;
    nlohmann::ordered_json index{{"metadata", {{"total_size", 4 * n}}},
                                 {"weight_map", nlohmann::ordered_json::object()}};
    for (size_t i = 0; i < n; ++i) {
      const std::string name = fmt::format("model.layers.{}.mlp.experts.{}.weight", i / 64, i % 64);
      entries.push_back({name, DType::kF32, {1}, 4 * i, 4 * i + 4});
      index["weight_map"][name] = fmt::format("model-{:05d}.safetensors", i % 100);
    }
    const std::string header = encode_safetensors_header(entries, {{"format", "pt"}}).substr(8);
    const std::string index_text = index.dump();
    size_t parsed = 0;
    const double header_s =
        median_seconds([&] { parsed = parse_safetensors_header(header, 4 * n, "bench").tensors.size(); });
    const double index_s = median_seconds([&] { parse_index(index_text, "bench"); });
    if (parsed != n) throw std::runtime_error(fmt::format("parsed {} of {} tensors", parsed, n));
    double before_s = -1;  // minutes past 40,000 tensors
    if (n <= args.before_up_to) before_s = median_seconds([&] { parse_with_callback_parser(header); });
    const std::string line =
        fmt::format("| {} | {} | {:.3f} | {} | {:.3f} | {:.2f} | {} |\n", n, header.size(), header_s, index_text.size(),
                    index_s, 1e6 * header_s / n, before_s < 0 ? "not run" : fmt::format("{:.3f}", before_s));
    fmt::print("{}", line);
    table += line;
    results.push_back(
        {{"tensors", n},
         {"header_bytes", header.size()},
         {"header_parse_seconds", header_s},
         {"index_bytes", index_text.size()},
         {"index_parse_seconds", index_s},
         {"callback_parser_seconds", before_s < 0 ? nlohmann::ordered_json() : nlohmann::ordered_json(before_s)}});
  }
  std::ofstream(args.out + ".json") << results.dump(2) << "\n";
  std::ofstream(args.out + ".md") << table;
  fmt::print("wrote {0}.json and {0}.md\n", args.out);
  return 0;
}

}  // namespace shardcast::bench
