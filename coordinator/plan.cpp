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

constexpr uint64_t kPage = 4096;  // a tensor cut between nodes is cut at a page of its file

int least_loaded(const std::vector<uint64_t>& load) {
  return static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
}

// Who reads what (PlannedRead, SegmentPiece): see make_plan.
void assign_reads(const Catalog& catalog, const LoadRequest& request, int local_size, int nodes, Plan& plan) {
  auto source_bytes = [&](const PlannedTensor& p) { return p.tied ? 0 : catalog.tensors[p.catalog_index].nbytes(); };
  uint64_t total = 0;
  for (const PlannedSegment& segment : plan.segments) {
    for (const PlannedTensor& p : segment.tensors) total += source_bytes(p);
  }
  const uint64_t share = (total + nodes - 1) / nodes;
  std::vector<uint64_t> node_load(nodes, 0);
  auto whole = [&](PlannedSegment& segment, int node) {
    for (uint32_t i = 0; i < segment.tensors.size(); ++i) {
      if (segment.tensors[i].tied) continue;
      const uint64_t numel = catalog.tensors[segment.tensors[i].catalog_index].numel();
      segment.reads.push_back({i, 0, numel, node, 0});
      node_load[node] += source_bytes(segment.tensors[i]);
    }
  };
  auto is_bin = [&](const PlannedSegment& segment) {
    return catalog.shards[segment.shard].format == CheckpointFormat::kTorchBin;
  };
  // .bin segments whole, largest first onto the least loaded node.
  std::vector<PlannedSegment*> bins;
  for (PlannedSegment& segment : plan.segments) {
    if (is_bin(segment)) bins.push_back(&segment);
  }
  std::stable_sort(bins.begin(), bins.end(),
                   [](const PlannedSegment* a, const PlannedSegment* b) { return a->size > b->size; });
  for (PlannedSegment* segment : bins) whole(*segment, least_loaded(node_load));
  // Then the safetensors bytes in plan order, node after node up to the share (plus the slack before cutting).
  int node = 0;
  auto room = [&](uint64_t bytes) {
    return node == nodes - 1 || node_load[node] + bytes <= share + request.node_share_slack;
  };
  for (PlannedSegment& segment : plan.segments) {
    if (is_bin(segment)) continue;
    while (node < nodes - 1 && node_load[node] >= share) ++node;
    uint64_t bytes = 0;
    for (const PlannedTensor& p : segment.tensors) bytes += source_bytes(p);
    if (room(bytes)) {
      whole(segment, node);
      continue;
    }
    for (uint32_t i = 0; i < segment.tensors.size(); ++i) {
      const TensorInfo& t = catalog.tensors[segment.tensors[i].catalog_index];
      const uint64_t es = dtype_size(t.dtype), numel = t.numel();
      for (uint64_t first = 0; first < numel;) {
        while (node < nodes - 1 && node_load[node] >= share) ++node;
        uint64_t take = numel - first;
        if (!room(take * es)) {
          // Up to the share, rounded up to the next page of the file.
          const uint64_t begin = t.file_offset + first * es;
          const uint64_t end = (begin + share - std::min(share, node_load[node]) + kPage - 1) / kPage * kPage;
          take = std::clamp<uint64_t>((end - t.file_offset + es - 1) / es - first, 1, numel - first);
        }
        segment.reads.push_back({i, first, take, node, 0});
        node_load[node] += take * es;
        first += take;
      }
    }
  }

  // Within each node: a .bin segment's reads go to one rank (it decodes the shard whole); the others largest first
  // onto the least loaded local rank.
  const int readers = request.parallel_read ? std::max(1, local_size) : 1;
  for (int n = 0; n < nodes; ++n) {
    std::vector<uint64_t> load(readers, 0);
    std::vector<std::pair<PlannedRead*, uint64_t>> spread;  // with its bytes
    for (PlannedSegment& segment : plan.segments) {
      if (is_bin(segment)) {
        if (segment.reads.empty() || segment.reads[0].node != n) continue;
        const int r = least_loaded(load);
        for (PlannedRead& read : segment.reads) read.reader = r;
        load[r] += segment.size;
        continue;
      }
      for (PlannedRead& read : segment.reads) {
        const DType dtype = catalog.tensors[segment.tensors[read.tensor].catalog_index].dtype;
        if (read.node == n) spread.emplace_back(&read, read.count * dtype_size(dtype));
      }
    }
    std::stable_sort(spread.begin(), spread.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    for (auto& [read, bytes] : spread) {
      read->reader = least_loaded(load);
      load[read->reader] += bytes;
    }
  }

  // Pieces for the exchange; a mapped run read by several nodes is staged on every node instead.
  for (PlannedSegment& segment : plan.segments) {
    for (const PlannedRead& read : segment.reads) {
      const PlannedTensor& p = segment.tensors[read.tensor];
      const uint64_t end = p.offset + (read.first + read.count) * dtype_size(p.dtype);
      if (segment.pieces.empty() || segment.pieces.back().node != read.node) {
        segment.pieces.push_back({segment.pieces.empty() ? 0 : segment.pieces.back().end, end, read.node});
      } else {
        segment.pieces.back().end = end;
      }
    }
    if (segment.pieces.empty()) segment.pieces.push_back({0, 0, 0});
    segment.pieces.back().end = segment.size;
    if (segment.mapped && segment.sole_node() < 0) {
      segment.mapped = false;
      for (PlannedTensor& p : segment.tensors) p.source = TensorSource::kSplit;
    }
  }
}

void mix(uint64_t& h, uint64_t v) {
  h = (h ^ v) * 1099511628211ull;
}
void mix(uint64_t& h, const std::string& s) {
  for (unsigned char c : s) mix(h, c);
  mix(h, 0xff);
}

}  // namespace

std::string_view map_files_name(MapFiles map_files) {
  switch (map_files) {
    case MapFiles::kAuto: return "auto";
    case MapFiles::kAlways: return "always";
    case MapFiles::kNever: return "never";
  }
  return "?";
}

MapFiles parse_map_files(const std::string& name) {
  for (MapFiles m : {MapFiles::kAuto, MapFiles::kAlways, MapFiles::kNever}) {
    if (name == map_files_name(m)) return m;
  }
  throw Error(ErrorCode::kInvalidArgument, fmt::format("map_files '{}' is not one of auto, always, never", name));
}

std::string_view source_name(TensorSource source) {
  switch (source) {
    case TensorSource::kMapped: return "mapped";
    case TensorSource::kStaged: return "staged (mapping off)";
    case TensorSource::kConverted: return "staged (converted to another dtype)";
    case TensorSource::kBin: return "staged (.bin: no byte range to map)";
    case TensorSource::kUnaligned: return "staged (file offset not aligned to its element size)";
    case TensorSource::kNetworkFs: return "staged (network file system)";
    case TensorSource::kSplit: return "staged (its run is read by several nodes)";
    case TensorSource::kReceived: return "staged (received from the node that mapped it)";
  }
  return "?";
}

int PlannedSegment::sole_node() const {
  for (const SegmentPiece& piece : pieces) {
    if (piece.node != pieces.front().node) return -1;
  }
  return pieces.empty() ? 0 : pieces.front().node;
}

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
  // Why `t` cannot be mapped (kMapped: it can).
  auto source_of = [&](const TensorInfo& t, DType dtype) {
    if (request.map_files == MapFiles::kNever) return TensorSource::kStaged;
    if (!t.has_file_range) return TensorSource::kBin;
    if (dtype != t.dtype) return TensorSource::kConverted;
    if (t.file_offset % dtype_size(t.dtype) != 0) return TensorSource::kUnaligned;
    if (request.map_files == MapFiles::kAuto && catalog.shards[t.shard].network_fs) return TensorSource::kNetworkFs;
    return TensorSource::kMapped;
  };
  Plan plan;
  auto add_segment = [&](PlannedSegment&& segment) {
    if (segment.tensors.empty()) return;
    plan.tensor_count += segment.tensors.size();
    plan.total_bytes += segment.size;
    plan.segments.push_back(std::move(segment));
  };
  for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
    PlannedSegment segment;  // the shard's staged tensors
    segment.shard = s;
    PlannedSegment run;                          // the current run of adjacent mapped tensors
    std::map<std::string_view, size_t> planned;  // storage's first name -> its index in segment.tensors
    for (const TensorInfo* t : shard_tensors_in_read_order(catalog, s)) {
      if (request.only_listed ? !listed.count(t->name) : !tensor_selected(t->name, request.tensors)) {
        continue;
      }
      PlannedTensor p;
      p.catalog_index = static_cast<uint32_t>(t - catalog.tensors.data());
      p.dtype = loaded_dtype(*t, request);
      p.nbytes = t->numel() * dtype_size(p.dtype);
      p.source = source_of(*t, p.dtype);
      if (p.source == TensorSource::kMapped) {
        if (!run.tensors.empty() && t->file_offset != run.file_offset + run.size) {
          add_segment(std::move(run));
          run = PlannedSegment{};
        }
        if (run.tensors.empty()) {
          run.shard = s;
          run.mapped = true;
          run.file_offset = t->file_offset / kTensorAlignment * kTensorAlignment;
          run.size = t->file_offset - run.file_offset;
        }
        p.offset = t->file_offset - run.file_offset;
        run.size = p.offset + p.nbytes;
        plan.tensor_bytes += p.nbytes;
        run.tensors.push_back(p);
        continue;
      }
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
        p.offset = (segment.size + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
        segment.size = p.offset + p.nbytes;
        plan.tensor_bytes += p.nbytes;
      }
      planned.emplace(storage, segment.tensors.size());
      segment.tensors.push_back(p);
    }
    add_segment(std::move(segment));
    add_segment(std::move(run));
  }

  assign_reads(catalog, request, local_size, std::max(1, node_count), plan);

  if (request.one_shard_at_a_time) {
    for (size_t i = 0; i < plan.segments.size(); ++i) plan.batches.push_back({i});
  } else if (!plan.segments.empty()) {
    plan.batches.emplace_back();
    for (size_t i = 0; i < plan.segments.size(); ++i) plan.batches[0].push_back(i);
  }

  // A segment's hash covers what its bytes are (a kept copy is reused by a job with other readers); the plan's covers
  // who reads what too, so that ranks that planned differently are caught before any of them waits.
  uint64_t h = 1469598103934665603ull;
  for (PlannedSegment& segment : plan.segments) {
    uint64_t content = 1469598103934665603ull;
    mix(content, segment.shard);
    mix(content, segment.size);
    mix(content, static_cast<uint64_t>(segment.mapped));
    mix(content, segment.file_offset);
    for (const PlannedTensor& p : segment.tensors) {
      mix(content, catalog.tensors[p.catalog_index].name);
      mix(content, static_cast<uint64_t>(p.dtype));
      mix(content, p.offset);
      mix(content, p.nbytes);
      mix(content, static_cast<uint64_t>(p.tied));
    }
    segment.layout_hash = content;
    mix(h, content);
    for (const PlannedTensor& p : segment.tensors) mix(h, static_cast<uint64_t>(p.source));
    for (const PlannedRead& r : segment.reads) {
      for (uint64_t v : {uint64_t{r.tensor}, r.first, r.count, uint64_t(r.node), uint64_t(r.reader)}) mix(h, v);
    }
    for (const SegmentPiece& piece : segment.pieces) {
      for (uint64_t v : {piece.begin, piece.end, uint64_t(piece.node)}) mix(h, v);
    }
  }
  plan.layout_hash = h;
  return plan;
}

}  // namespace shardcast
