#include "coordinator/torch_bin.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <set>
#include <tuple>

#include <ATen/ATen.h>
#include <caffe2/serialize/file_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/versions.h>
#include <fmt/format.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/storage_context.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include "coordinator/pickle_compat.h"
#include "coordinator/torch_dtype.h"
#include "coordinator/zip_directory.h"
#include "core/error.h"
#include "core/file.h"
#include "core/io_stats.h"

namespace shardcast {
namespace {

[[noreturn]] void corrupt(const std::filesystem::path& path, const std::string& what) {
  throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': {}", path.string(), what));
}

DType to_dtype(at::ScalarType type, const std::filesystem::path& path, const std::string& name) {
  auto dtype = from_scalar_type(type);
  if (!dtype)
    corrupt(path, fmt::format("tensor '{}' has dtype {}, which shardcast does not load", name, c10::toString(type)));
  return *dtype;
}

at::ScalarType to_torch(DType dtype, const std::string& name) {
  auto type = to_scalar_type(dtype);
  if (!type) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor '{}': dtype {} has no equivalent in this LibTorch ({}.{}); use safetensors", name,
                            dtype_name(dtype), TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR));
  }
  return *type;
}

// LibTorch's pickler names each storage torch.<Type>Storage, a class PyTorch has only for the classic dtypes: a .bin
// holding F8 or U16/U32/U64 (which LibTorch 2.x could write) would not load in PyTorch.
bool python_can_load_in_bin(DType dtype) {
  switch (dtype) {
    case DType::kF8_E5M2:
    case DType::kF8_E4M3:
    case DType::kU16:
    case DType::kU32:
    case DType::kU64: return false;
    default: return true;
  }
}

// The archive, opened once for the checks shardcast makes itself (LibTorch's reader opens it again by name).
File open_zip_archive(const std::filesystem::path& path) {
  File file = File::open_read(path);
  unsigned char magic[4] = {0, 0, 0, 0};
  if (file.size() < 4) corrupt(path, fmt::format("file is {} bytes, too short for a torch.save archive", file.size()));
  file.read_exact_at(magic, 4, 0);
  if (magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4) return file;
  if (magic[0] == 0x80) {
    corrupt(path,
            "legacy torch.save format (non-zip, before PyTorch 1.6) is not supported; re-save it with "
            "torch.save(torch.load(f), f2) in PyTorch >= 1.6, then run shardcast convert");
  }
  corrupt(path, "not a torch.save zip archive (no 'PK' zip signature)");
}

}  // namespace

namespace {

// The view must lie inside its storage, and (with data) the storage inside the record it was read from.
void check_view_fits(const std::filesystem::path& path, const std::string& name, const at::Tensor& t,
                     uint64_t file_size, const std::map<const void*, size_t>* record_bytes) {
  const uint64_t item = t.element_size();
  const uint64_t storage_bytes = t.storage().nbytes();
  // Even before any record is read (the catalog reads the pickle alone), a storage cannot hold more than the file:
  // its size is what a load reserves shared memory for.
  if (storage_bytes > file_size) {
    corrupt(path,
            fmt::format("tensor '{}' claims a storage of {} bytes in a file of {}", name, storage_bytes, file_size));
  }
  if (t.storage_offset() < 0) corrupt(path, fmt::format("tensor '{}' has a negative storage offset", name));
  uint64_t last = static_cast<uint64_t>(t.storage_offset());  // element index of the last element
  bool empty = false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) < 0 || t.stride(d) < 0) corrupt(path, fmt::format("tensor '{}' has a negative size or stride", name));
    if (t.size(d) == 0) empty = true;
    uint64_t reach = 0;
    if (t.size(d) > 0 &&
        __builtin_mul_overflow(static_cast<uint64_t>(t.size(d) - 1), static_cast<uint64_t>(t.stride(d)), &reach)) {
      corrupt(path, fmt::format("tensor '{}' has a shape whose extent overflows", name));
    }
    if (__builtin_add_overflow(last, reach, &last)) corrupt(path, fmt::format("tensor '{}' extent overflows", name));
  }
  uint64_t needed = 0;
  if (!empty && (__builtin_mul_overflow(last + 1, item, &needed) || needed > storage_bytes)) {
    corrupt(path, fmt::format("tensor '{}' reaches byte {} of a storage of {} bytes", name, needed, storage_bytes));
  }
  // A view may repeat its storage (stride 0), but what it would be copied out to must be justified by the file: a
  // 500-byte archive must not become 4 GB of contiguous tensor.
  uint64_t view_bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(t.numel()), item, &view_bytes) ||
      (view_bytes > storage_bytes && view_bytes > file_size)) {
    corrupt(path, fmt::format("tensor '{}' repeats a storage of {} bytes into a view of {} bytes, more than the whole "
                              "file ({} bytes)",
                              name, storage_bytes, view_bytes, file_size));
  }
  if (record_bytes && storage_bytes > 0) {
    auto it = record_bytes->find(t.storage().data());
    const uint64_t held = it == record_bytes->end() ? 0 : it->second;
    if (storage_bytes > held) {
      corrupt(path, fmt::format("tensor '{}': its storage claims {} bytes but the archive record holds {}", name,
                                storage_bytes, held));
    }
  }
}

// LibTorch's reader parses the version record while it opens the archive, and leaks its zip state when that throws:
// the record is checked here first, as its std::stoull would read it (whitespace, then digits), and against the
// versions it supports.
void check_format_version(const File& archive, const std::map<std::string, ZipRecord>& directory) {
  auto it = directory.find(".data/version");
  if (it == directory.end()) it = directory.find("version");
  if (it == directory.end()) corrupt(archive.path(), "the archive has no 'version' record");
  if (it->second.size > 64) {  // torch.save writes "3\n"
    corrupt(archive.path(),
            fmt::format("record '{}' holds {} bytes, not a version number", it->first, it->second.size));
  }
  const std::string text = read_zip_record(archive, it->first, it->second);
  size_t at = 0;
  while (at < text.size() && std::isspace(static_cast<unsigned char>(text[at]))) ++at;
  uint64_t version = 0;
  const size_t digits = at;
  while (at < text.size() && std::isdigit(static_cast<unsigned char>(text[at])) && version <= 1'000'000) {
    version = version * 10 + static_cast<uint64_t>(text[at++] - '0');
  }
  using caffe2::serialize::kMaxSupportedFileFormatVersion, caffe2::serialize::kMinSupportedFileFormatVersion;
  if (at == digits || version < kMinSupportedFileFormatVersion || version > kMaxSupportedFileFormatVersion) {
    corrupt(archive.path(), fmt::format("record '{}' holds no file format version from {} to {} this LibTorch reads",
                                        it->first, kMinSupportedFileFormatVersion, kMaxSupportedFileFormatVersion));
  }
}

std::vector<BinTensor> decode(const std::filesystem::path& path, bool with_data) {
  const File archive = open_zip_archive(path);
  const uint64_t file_size = archive.size();
  const std::map<std::string, ZipRecord> directory = read_zip_directory(archive);
  check_format_version(archive, directory);
  // LibTorch's reader skips the CRC-32 of each record: a flipped byte would load as a different value.
  std::set<std::string> checked;
  auto check_crc = [&](const std::string& name, const void* data, size_t size) {
    auto it = directory.find(name);
    if (it == directory.end()) corrupt(path, fmt::format("record '{}' is missing from the zip's directory", name));
    check_zip_record(path.string(), name, it->second, data, size);
    checked.insert(name);
  };
  c10::IValue root;
  // The unpickler sizes a storage from the element count in the pickle, not from its record: remember each record's
  // size so a storage that claims more than its record holds is refused, not read past its end.
  std::map<const void*, size_t> record_bytes;
  try {
    // What torch::jit::readArchiveAndTensors does, with the pickle made readable by this unpickler first.
    caffe2::serialize::PyTorchStreamReader reader(path.string());
    // Without data only the zip directory and the pickle are read; storages become empty placeholders.
    count_checkpoint_read(with_data ? file_size : 0);
    auto [pickle_data, pickle_size] = reader.getRecord("data.pkl");
    check_crc("data.pkl", pickle_data.get(), pickle_size);
    std::string pickle;
    try {
      pickle =
          make_pickle_loadable_by_libtorch(std::string_view(static_cast<const char*>(pickle_data.get()), pickle_size));
    } catch (const Error& e) {
      corrupt(path, fmt::format("cannot decode the torch.save archive: {}", e.what()));
    }
    size_t position = 0;
    auto read = [&](char* buffer, size_t n) {
      n = std::min(n, pickle.size() - position);
      std::memcpy(buffer, pickle.data() + position, n);
      position += n;
      return n;
    };
    auto read_record = [&](const std::string& name) {
      if (!with_data) return at::DataPtr(nullptr, at::Device(at::kCPU));
      auto [data, size] = reader.getRecord("data/" + name);
      check_crc("data/" + name, data.get(), size);
      record_bytes[data.get()] = size;
      return std::move(data);
    };
    // No type resolver and no object loader: any global beyond tensors, storages and containers is refused. The
    // storage context makes tensors that name one storage share it (tied weights saved as separate views).
    torch::jit::Unpickler unpickler(read, nullptr, nullptr, read_record, at::Device(at::kCPU),
                                    /*use_storage_device=*/false, torch::jit::Unpickler::defaultTypeParser,
                                    std::make_shared<torch::jit::DeserializationStorageContext>());
    unpickler.set_version(reader.version());
    root = unpickler.parse_ivalue();
    if (!with_data) count_checkpoint_read(pickle_size);
    if (with_data) {
      // Every other record too (version, byteorder, storages no tensor names), so a verified file is sound throughout.
      for (const std::string& name : reader.getAllRecords()) {
        if (checked.count(name)) continue;
        auto [data, size] = reader.getRecord(name);
        check_crc(name, data.get(), size);
      }
    }
  } catch (const Error&) {
    throw;  // shardcast's own checks, which name the file already
  } catch (const c10::Error& e) {
    corrupt(path, fmt::format("cannot decode the torch.save archive: {}", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    corrupt(path, fmt::format("cannot decode the torch.save archive: {}", e.what()));
  }
  if (!root.isGenericDict()) {
    corrupt(path, fmt::format("holds a {}, expected a state dict (name -> tensor)", root.tagKind()));
  }

  std::vector<std::pair<std::string, at::Tensor>> entries;
  for (const auto& item : root.toGenericDict()) {
    if (!item.key().isString())
      corrupt(path, fmt::format("state dict has a {} key, expected names", item.key().tagKind()));
    const std::string name = item.key().toStringRef();
    if (name == kPickleStateKey) continue;  // an OrderedDict's _metadata, see pickle_compat.h
    if (!item.value().isTensor()) {
      corrupt(path, fmt::format("key '{}' holds a {}, not a tensor; shardcast loads flat state dicts", name,
                                item.value().tagKind()));
    }
    const at::Tensor& tensor = item.value().toTensor();
    check_view_fits(path, name, tensor, file_size, with_data ? &record_bytes : nullptr);
    entries.emplace_back(name, tensor);
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  // Tied weights: the same storage viewed the same way. Key on everything that defines the view.
  using ViewKey = std::tuple<const void*, int64_t, std::vector<int64_t>, std::vector<int64_t>, int>;
  std::map<ViewKey, size_t> first_view;
  std::vector<BinTensor> out;
  out.reserve(entries.size());
  for (auto& [name, tensor] : entries) {
    BinTensor t;
    t.name = name;
    t.dtype = to_dtype(tensor.scalar_type(), path, name);
    t.shape = tensor.sizes().vec();
    ViewKey key{tensor.storage().unsafeGetStorageImpl(), tensor.storage_offset(), tensor.sizes().vec(),
                tensor.strides().vec(), static_cast<int>(tensor.scalar_type())};
    auto [it, inserted] = first_view.emplace(key, out.size());
    if (!inserted && tensor.numel() > 0) {
      const BinTensor& original = out[it->second];
      t.tied_to = original.name;
      t.bytes = original.bytes;
    } else {
      if (with_data) {
        auto contiguous = std::make_shared<at::Tensor>(tensor.contiguous());
        t.bytes = Bytes{static_cast<const uint8_t*>(contiguous->data_ptr()), contiguous->nbytes(), contiguous};
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

std::vector<BinTensor> read_torch_bin(const std::filesystem::path& path) {
  return decode(path, true);
}

std::vector<BinTensor> read_torch_bin_metadata(const std::filesystem::path& path) {
  return decode(path, false);
}

void write_torch_bin(const std::filesystem::path& path, const std::vector<TensorData>& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const TensorData& t : tensors) {
    if (!python_can_load_in_bin(t.dtype)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("tensor '{}': dtype {} cannot go into a torch .bin that PyTorch loads; use safetensors",
                              t.name, dtype_name(t.dtype)));
    }
    auto options = at::TensorOptions().dtype(to_torch(t.dtype, t.name));
    at::Tensor tensor = at::empty(t.shape, options);
    if (tensor.nbytes() != t.bytes.size) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("tensor '{}': {} bytes given, its shape needs {}", t.name,
                                                           t.bytes.size, tensor.nbytes()));
    }
    if (t.bytes.size > 0) std::memcpy(tensor.data_ptr(), t.bytes.data, t.bytes.size);
    if (!dict.insert(t.name, tensor).second) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("tensor '{}' is given twice", t.name));
    }
  }
  // torch::jit::pickle_save, but without the torch.jit._pickle.restore_type_tag wrapper around the dict (its
  // tag_aggregates): that global is not on torch.load(weights_only=True)'s allowlist, PyTorch's default since 2.6.
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* data, size_t n) { pickle.insert(pickle.end(), data, data + n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  std::vector<char> archive;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    archive.insert(archive.end(), static_cast<const char*>(data), static_cast<const char*>(data) + n);
    return n;
  });
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
  File file = File::create_exclusive(path);
  file.write_all(archive.data(), archive.size());
  file.sync();
}

}  // namespace shardcast
