#include "coordinator/plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <string_view>

#include <fmt/format.h>

#include "coordinator/shard_reader.h"
#include "core/dtype_cast.h"

namespace shardcast {
namespace {

// Does `name` hold `module` as whole components?
bool holds_module(const std::string& name, const std::string& module) {
  for (size_t at = name.find(module); at != std::string::npos; at = name.find(module, at + 1)) {
    const size_t end = at + module.size();
    if ((at == 0 || name[at - 1] == '.') && (end == name.size() || name[end] == '.')) return true;
  }
  return false;
}

void mix(uint64_t& h, uint64_t v) {
  h = (h ^ v) * 1099511628211ull;
}
void mix(uint64_t& h, const std::string& s) {
  for (unsigned char c : s) mix(h, c);
  mix(h, 0xff);
}

}  // namespace

bool pattern_matches(const std::string& pattern, const std::string& name) {
  if (!pattern.empty() && pattern.back() == '*')
    return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
  return name == pattern;
}

void check_patterns_match(const Catalog& catalog, const std::vector<std::string>& patterns) {
  for (const std::string& pattern : patterns) {
    const bool any = pattern.empty() || pattern.back() != '*'
                         ? catalog.find(pattern) != nullptr
                         : std::any_of(catalog.tensors.begin(), catalog.tensors.end(),
                                       [&](const TensorInfo& t) { return pattern_matches(pattern, t.name); });
    if (!any) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("tensor '{}' is not in checkpoint '{}'", pattern, catalog.root.string()));
    }
  }
}

bool tensor_selected(const std::string& name, const std::vector<std::string>& patterns) {
  if (patterns.empty()) return true;
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return pattern_matches(p, name); });
}

std::optional<DType> auto_dtype(const Catalog& catalog) {
  if (!catalog.config_problem.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("dtype \"auto\" reads config.json, which failed: {}", catalog.config_problem));
  }
  if (!catalog.config_dtype.empty()) {
    std::optional<DType> dtype = dtype_from_user_name(catalog.config_dtype);
    if (!dtype || !dtype_is_floating(*dtype) || !can_cast(*dtype, DType::kF32)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("dtype \"auto\": '{}' gives torch_dtype '{}', which is not a dtype to load floating "
                              "tensors in (F16, BF16, F32, F64); pass a dtype",
                              (catalog.root / "config.json").string(), catalog.config_dtype));
    }
    return dtype;
  }
  for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
    for (const TensorInfo& t : catalog.tensors) {  // by name
      if (t.shard == s && dtype_is_floating(t.dtype) && can_cast(t.dtype, DType::kF32)) return t.dtype;
    }
  }
  return std::nullopt;
}

DType loaded_dtype(const TensorInfo& tensor, const LoadRequest& request) {
  if (!dtype_is_floating(tensor.dtype) || !can_cast(tensor.dtype, DType::kF32) || !request.dtype) return tensor.dtype;
  if (*request.dtype == DType::kF16 || *request.dtype == DType::kBF16) {
    for (const std::string& module : request.keep_in_fp32) {
      if (holds_module(tensor.name, module)) return DType::kF32;
    }
  }
  return *request.dtype;
}

LoadRequest resolve_dtype(const Catalog& catalog, LoadRequest request) {
  if (request.dtype_auto) {
    request.dtype = auto_dtype(catalog);
    request.dtype_auto = false;
  }
  if (request.dtype && !(dtype_is_floating(*request.dtype) && can_cast(*request.dtype, DType::kF32))) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("dtype {} cannot be loaded into: use F16, BF16, F32, F64, auto or keep",
                            dtype_name(*request.dtype)));
  }
  return request;
}

Plan make_plan(const Catalog& catalog, const LoadRequest& unresolved, int local_size, int node_count) {
  const LoadRequest request = resolve_dtype(catalog, unresolved);
  check_patterns_match(catalog, request.tensors);

  const std::set<std::string> listed(request.tensors.begin(), request.tensors.end());
  Plan plan;
  for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
    PlannedSegment segment;
    segment.shard = s;
    std::map<std::string_view, size_t> planned;  // storage's first name -> its index in segment.tensors
    for (const TensorInfo* t : shard_tensors_in_read_order(catalog, s)) {
      if (request.only_listed ? !listed.count(t->name) : !tensor_selected(t->name, request.tensors)) {
        continue;
      }
      PlannedTensor p;
      p.catalog_index = static_cast<uint32_t>(t - catalog.tensors.data());
      // Tied names all name the first one as tied_to: the first of them selected holds the bytes.
      const std::string_view storage = t->tied_to.empty() ? std::string_view(t->name) : t->tied_to;
      auto original = planned.find(storage);
      if (original != planned.end()) {
        const PlannedTensor& o = segment.tensors[original->second];
        p.dtype = o.dtype;
        p.offset = o.offset;
        p.nbytes = o.nbytes;
        p.tied = true;
      } else {
        p.dtype = loaded_dtype(*t, request);
        p.nbytes = t->numel() * dtype_size(p.dtype);
        p.offset = (segment.size + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
        segment.size = p.offset + p.nbytes;
        plan.tensor_bytes += p.nbytes;
      }
      planned.emplace(storage, segment.tensors.size());
      segment.tensors.push_back(p);
    }
    if (segment.tensors.empty()) continue;
    plan.tensor_count += segment.tensors.size();
    plan.total_bytes += segment.size;
    plan.segments.push_back(std::move(segment));
  }

  // Owners: whole segments onto nodes, largest first onto the least loaded node.
  auto least_loaded = [](const std::vector<uint64_t>& load) {
    return static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
  };
  std::vector<PlannedSegment*> by_size;
  for (PlannedSegment& segment : plan.segments) by_size.push_back(&segment);
  std::stable_sort(by_size.begin(), by_size.end(),
                   [](const PlannedSegment* a, const PlannedSegment* b) { return a->size > b->size; });
  std::vector<uint64_t> node_load(std::max(1, node_count), 0);
  for (PlannedSegment* segment : by_size) {
    segment->owner_node = least_loaded(node_load);
    node_load[segment->owner_node] += segment->size;
  }

  // Readers within the owner node: a .bin shard is decoded whole by one rank; safetensors tensors are spread over the
  // local ranks, largest first onto the least loaded rank.
  const int readers = request.parallel_read ? std::max(1, local_size) : 1;
  for (int node = 0; node < static_cast<int>(node_load.size()); ++node) {
    std::vector<uint64_t> load(readers, 0);
    std::vector<PlannedTensor*> spread;
    for (PlannedSegment& segment : plan.segments) {
      if (segment.owner_node != node) continue;
      if (catalog.shards[segment.shard].format == CheckpointFormat::kTorchBin) {
        int r = least_loaded(load);
        for (PlannedTensor& p : segment.tensors) p.reader = r;
        load[r] += segment.size;
      } else {
        for (PlannedTensor& p : segment.tensors) spread.push_back(&p);
      }
    }
    std::stable_sort(spread.begin(), spread.end(),
                     [](const PlannedTensor* a, const PlannedTensor* b) { return a->nbytes > b->nbytes; });
    for (PlannedTensor* p : spread) {
      p->reader = least_loaded(load);
      load[p->reader] += p->nbytes;
    }
  }

  if (request.one_shard_at_a_time) {
    for (size_t i = 0; i < plan.segments.size(); ++i) plan.batches.push_back({i});
  } else if (!plan.segments.empty()) {
    plan.batches.emplace_back();
    for (size_t i = 0; i < plan.segments.size(); ++i) plan.batches[0].push_back(i);
  }

  uint64_t h = 1469598103934665603ull;
  for (const PlannedSegment& segment : plan.segments) {
    mix(h, segment.shard);
    mix(h, segment.size);
    mix(h, static_cast<uint64_t>(segment.owner_node));
    for (const PlannedTensor& p : segment.tensors) {
      const TensorInfo& t = catalog.tensors[p.catalog_index];
      mix(h, t.name);
      mix(h, static_cast<uint64_t>(p.dtype));
      mix(h, p.offset);
      mix(h, p.nbytes);
      mix(h, static_cast<uint64_t>(p.reader));
      mix(h, static_cast<uint64_t>(p.tied));
    }
  }
  plan.layout_hash = h;
  return plan;
}

}  // namespace shardcast
