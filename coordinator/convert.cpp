#include "coordinator/convert.h"

#include "coordinator/catalog.h"
#include "coordinator/shard_reader.h"
#include "core/dtype_cast.h"

namespace shardcast {
namespace {

bool converts(DType from, const std::optional<DType>& to) {
  return to && from != *to && dtype_is_floating(from) && can_cast(from, *to);
}

}  // namespace

ConvertResult convert_checkpoint(const std::filesystem::path& src, const std::filesystem::path& dst,
                                 const ConvertOptions& options) {
  Catalog catalog = open_catalog(src);
  if (options.dtype && !(dtype_is_floating(*options.dtype) && can_cast(*options.dtype, DType::kF32))) {
    throw Error(ErrorCode::kInvalidArgument, "--dtype must be a floating type: F16, BF16, F32 or F64");
  }

  // Source order, shard by shard, so each source shard is read once.
  std::vector<const TensorInfo*> order;
  for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
    for (const TensorInfo* t : shard_tensors_in_read_order(catalog, s)) order.push_back(t);
  }
  std::vector<TensorSpec> specs;
  ConvertResult result;
  for (const TensorInfo* t : order) {
    TensorSpec spec = *t;
    if (converts(t->dtype, options.dtype)) {
      spec.dtype = *options.dtype;
      ++result.cast;
    }
    if (!t->tied_to.empty()) ++result.untied;
    specs.push_back(std::move(spec));
  }

  WriterOptions writer_options;
  writer_options.max_shard_size = options.max_shard_size;
  ShardedWriter writer(dst, specs, writer_options);
  read_all_tensors(catalog, [&](const TensorInfo& t, const Bytes& bytes) {
    TensorData out;
    static_cast<TensorSpec&>(out) = t;
    if (converts(t.dtype, options.dtype)) {
      std::vector<uint8_t> buffer(t.numel() * dtype_size(*options.dtype));
      cast_elements(bytes.data, t.dtype, buffer.data(), *options.dtype, t.numel());
      out.dtype = *options.dtype;
      out.bytes = Bytes::from_vector(std::move(buffer));
    } else {
      out.bytes = bytes;
    }
    writer.add(std::move(out));
  });
  result.files = writer.finish();
  result.tensors = specs.size();
  return result;
}

}  // namespace shardcast
