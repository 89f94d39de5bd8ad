#include "coordinator/synth.h"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"
#include "core/size.h"

namespace shardcast {
namespace {

uint64_t fnv1a(std::string_view text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Bit patterns of small finite numbers: sign, an exponent just below 1.0, random mantissa.
uint16_t bf16_bits(uint64_t r) {
  return static_cast<uint16_t>(((r & 1) << 15) | ((120 + (r >> 1) % 7) << 7) | ((r >> 4) & 0x7f));
}
uint16_t f16_bits(uint64_t r) {
  return static_cast<uint16_t>(((r & 1) << 15) | ((10 + (r >> 1) % 5) << 10) | ((r >> 4) & 0x3ff));
}
uint32_t f32_bits(uint64_t r) {
  return static_cast<uint32_t>(((r & 1) << 31) | ((120 + (r >> 1) % 7) << 23) | ((r >> 8) & 0x7fffff));
}
uint8_t f8_bits(uint64_t r) {
  return static_cast<uint8_t>(r & 0x3f);
}  // sign 0, small exponent: finite in both F8s

}  // namespace

std::vector<TensorSpec> synth_layout(uint64_t size, bool torch_dtypes_only) {
  if (size < kSynthMinSize) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("synthetic checkpoint size {} is below the minimum of {}",
                                                         format_size(size), format_size(kSynthMinSize)));
  }
  // Hidden size h (a multiple of 64) so that about 8 layers plus embeddings fill the budget; then as many layers as
  // fit. Per layer: 4 h x h attention + 3 h x 2h MLP projections in bf16, two f32 norms of h, an f16 table of h/2.
  int64_t h = std::max<int64_t>(64, static_cast<int64_t>(std::sqrt(static_cast<double>(size) / 176.0)) / 64 * 64);
  const int64_t vocab = 4 * h;
  const uint64_t per_layer = 2 * (4 * h * h + 6 * h * h) + 2 * 4 * h + 2 * (h / 2);

  std::vector<TensorSpec> extras = {
      {"model.rope_theta", DType::kF64, {}},
      {"model.attention_mask", DType::kBool, {64, 64}},
      {"model.position_ids", DType::kI64, {1, 256}},
      {"model.token_type_ids", DType::kI32, {1, 256}},
      {"model.quant.weight_int8", DType::kI8, {256, 64}},
      {"model.quant.zero_points", DType::kI16, {256}},
      {"model.quant.empty_bias", DType::kF32, {0}},
  };
  if (!torch_dtypes_only) {
    extras.push_back({"model.quant.scales_e4m3", DType::kF8_E4M3, {256}});
    extras.push_back({"model.quant.scales_e5m2", DType::kF8_E5M2, {256}});
    extras.push_back({"model.quant.codes_u16", DType::kU16, {256}});
    extras.push_back({"model.quant.codes_u32", DType::kU32, {128}});
    extras.push_back({"model.quant.codes_u64", DType::kU64, {64}});
  }
  uint64_t fixed = 2 * 2 * static_cast<uint64_t>(vocab * h) + 4 * static_cast<uint64_t>(h);
  for (const TensorSpec& e : extras) fixed += e.nbytes();
  if (fixed + per_layer > size) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("synthetic checkpoint size {} is too small", format_size(size)));
  }
  const uint64_t layers = (size - fixed) / per_layer;

  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", DType::kBF16, {vocab, h}});
  for (uint64_t l = 0; l < layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      specs.push_back({p + "self_attn." + proj + ".weight", DType::kBF16, {h, h}});
    }
    specs.push_back({p + "self_attn.rotary_emb.inv_freq", DType::kF16, {h / 2}});
    specs.push_back({p + "mlp.gate_proj.weight", DType::kBF16, {2 * h, h}});
    specs.push_back({p + "mlp.up_proj.weight", DType::kBF16, {2 * h, h}});
    specs.push_back({p + "mlp.down_proj.weight", DType::kBF16, {h, 2 * h}});
    specs.push_back({p + "input_layernorm.weight", DType::kF32, {h}});
    specs.push_back({p + "post_attention_layernorm.weight", DType::kF32, {h}});
  }
  specs.push_back({"model.norm.weight", DType::kF32, {h}});
  specs.push_back({"lm_head.weight", DType::kBF16, {vocab, h}});
  specs.insert(specs.end(), extras.begin(), extras.end());
  const uint64_t used = fixed + layers * per_layer;
  if (used < size) specs.push_back({"model.padding", DType::kU8, {static_cast<int64_t>(size - used)}});
  return specs;
}

Bytes synth_tensor_bytes(const TensorSpec& spec) {
  std::vector<uint8_t> buffer(spec.nbytes());
  uint64_t state = fnv1a(spec.name) ^ (static_cast<uint64_t>(spec.dtype) << 56);
  const size_t n = spec.numel();
  uint8_t* out = buffer.data();
  switch (spec.dtype) {
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v = bf16_bits(splitmix64(state));
        std::memcpy(out + 2 * i, &v, 2);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v = f16_bits(splitmix64(state));
        std::memcpy(out + 2 * i, &v, 2);
      }
      break;
    case DType::kF32:
      for (size_t i = 0; i < n; ++i) {
        uint32_t v = f32_bits(splitmix64(state));
        std::memcpy(out + 4 * i, &v, 4);
      }
      break;
    case DType::kF64:
      for (size_t i = 0; i < n; ++i) {
        double v = 10000.0 + static_cast<double>(splitmix64(state) % 1000);
        std::memcpy(out + 8 * i, &v, 8);
      }
      break;
    case DType::kBool:
      for (size_t i = 0; i < n; ++i) out[i] = splitmix64(state) & 1;
      break;
    case DType::kF8_E4M3:
    case DType::kF8_E5M2:
      for (size_t i = 0; i < n; ++i) out[i] = f8_bits(splitmix64(state));
      break;
    default:  // integers: any bit pattern is a valid value
      for (size_t i = 0; i < buffer.size(); i += 8) {
        uint64_t r = splitmix64(state);
        std::memcpy(out + i, &r, std::min<size_t>(8, buffer.size() - i));
      }
      break;
  }
  return Bytes::from_vector(std::move(buffer));
}

void synthesize_checkpoint(const std::filesystem::path& dir, uint64_t size, uint64_t max_shard_size,
                           CheckpointFormat format, bool torch_dtypes_only) {
  std::vector<TensorSpec> specs = synth_layout(size, torch_dtypes_only || format == CheckpointFormat::kTorchBin);
  WriterOptions options;
  options.format = format;
  options.max_shard_size = max_shard_size != 0 ? max_shard_size : (size + 3) / 4;
  ShardedWriter writer(dir, specs, options);
  for (const TensorSpec& spec : specs) {
    TensorData t;
    static_cast<TensorSpec&>(t) = spec;
    t.bytes = synth_tensor_bytes(spec);
    writer.add(std::move(t));
  }
  writer.finish();
}

}  // namespace shardcast
