#include "coordinator/tensor_parallel.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

#include "coordinator/plan.h"
#include "core/error.h"

namespace shardcast {
namespace {

// The plan's patterns (exact, "prefix*"), and "*suffix": rules usually name a kind of weight in every layer.
bool matches(const std::string& pattern, const std::string& name) {
  if (pattern.size() > 1 && pattern.front() == '*') {
    const size_t n = pattern.size() - 1;
    return name.size() >= n && name.compare(name.size() - n, n, pattern, 1, n) == 0;
  }
  return pattern_matches(pattern, name);
}

}  // namespace

SliceRule parse_slice_rule(const std::string& text) {
  const size_t colon = text.rfind(':');
  SliceRule rule;
  const char* end = text.data() + text.size();
  if (colon == std::string::npos || colon == 0 || std::from_chars(text.data() + colon + 1, end, rule.dim).ptr != end ||
      colon + 1 == text.size() || rule.dim < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor-parallel rule '{}' is not PATTERN:DIM (e.g. '*.q_proj.weight:0')", text));
  }
  rule.pattern = text.substr(0, colon);
  return rule;
}

TensorParallel tp_for_rank(const TensorParallel& tp, int rank, int world_size) {
  if (tp.size < 1 || world_size % tp.size != 0) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor-parallel size {} does not divide the job's {} ranks", tp.size, world_size));
  }
  TensorParallel out = tp;
  out.rank = rank % tp.size;
  return out;
}

const SliceRule* find_slice_rule(const TensorParallel& tp, const std::string& name) {
  for (const SliceRule& rule : tp.rules) {
    if (matches(rule.pattern, name)) return &rule;
  }
  return nullptr;
}

RankSlice rank_slice(const TensorSpec& tensor, const TensorParallel& tp) {
  RankSlice out;
  out.shape = tensor.shape;
  const uint64_t nbytes = tensor.nbytes();
  out.block = CopyBlock{0, 0, nbytes, 1, nbytes, nbytes};
  const SliceRule* rule = tp.size > 1 ? find_slice_rule(tp, tensor.name) : nullptr;
  if (!rule) return out;
  if (rule->dim >= static_cast<int>(tensor.shape.size())) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor '{}' of shape {} has no dim {} to split by rule '{}:{}'", tensor.name,
                            shape_string(tensor.shape), rule->dim, rule->pattern, rule->dim));
  }
  const int64_t extent = tensor.shape[rule->dim];
  const int64_t base = extent / tp.size, extra = extent % tp.size;
  out.sliced = true;
  out.dim = rule->dim;
  out.length = base + (tp.rank < extra ? 1 : 0);
  out.begin = tp.rank * base + std::min<int64_t>(tp.rank, extra);
  out.shape[rule->dim] = out.length;

  uint64_t outer = 1, inner = dtype_size(tensor.dtype);
  for (int d = 0; d < rule->dim; ++d) outer *= tensor.shape[d];
  for (size_t d = rule->dim + 1; d < tensor.shape.size(); ++d) inner *= tensor.shape[d];
  const uint64_t width = out.length * inner;
  // Dim 0 (or only size-1 dims before it) is one contiguous run.
  const uint64_t rows = width == 0 ? 0 : outer;
  out.block = CopyBlock{out.begin * inner, 0, width, rows, extent * inner, width};
  if (rows > 1 && width == extent * inner) out.block = CopyBlock{0, 0, width * rows, 1, width * rows, width * rows};
  return out;
}

std::vector<CopyBlock> clip(const CopyBlock& b, uint64_t begin, uint64_t end) {
  std::vector<CopyBlock> out;
  if (b.rows == 0 || b.width == 0 || end <= b.src || begin >= b.src_end()) return out;
  auto row_of = [&](uint64_t offset) { return offset <= b.src ? 0 : (offset - b.src) / b.src_pitch; };
  // Rows that meet the window: first .. last (inclusive).
  uint64_t first = row_of(begin), last = std::min(row_of(end - 1), b.rows - 1);
  auto part = [&](uint64_t row, uint64_t rows) {
    CopyBlock p = b;
    p.src = b.src + row * b.src_pitch;
    p.dst = b.dst + row * b.dst_pitch;
    p.rows = rows;
    return p;
  };
  auto cut = [&](CopyBlock p) {  // a single row clipped to the window
    const uint64_t lo = std::max(p.src, begin), hi = std::min(p.src + p.width, end);
    if (hi <= lo) return;
    p.dst += lo - p.src;
    p.src = lo;
    p.width = hi - lo;
    p.src_pitch = p.dst_pitch = p.width;
    out.push_back(p);
  };
  // The first row: whole when the window starts at or before it, else cut.
  CopyBlock head = part(first, 1);
  if (begin > head.src || end < head.src + head.width || first == last) {
    cut(head);
    if (first == last) return out;
    ++first;
  }
  CopyBlock tail = part(last, 1);
  const bool tail_partial = end < tail.src + tail.width;
  const uint64_t whole_last = tail_partial ? last : last + 1;  // exclusive
  if (whole_last > first) out.push_back(part(first, whole_last - first));
  if (tail_partial) cut(tail);
  return out;
}

}  // namespace shardcast
