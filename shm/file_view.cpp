#include "shm/file_view.h"

#include <fmt/format.h>
#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>

#include "core/error.h"
#include "shm/write_fault.h"

namespace shardcast::shm {
namespace bip = boost::interprocess;

struct FileView::Mapping {
  bip::file_mapping file;
  bip::mapped_region region;
};

std::shared_ptr<FileView> FileView::map(const std::filesystem::path& path, Access access) {
  std::shared_ptr<FileView> view(new FileView);
  try {
    bip::file_mapping file(path.c_str(), bip::read_only);
    if (std::filesystem::file_size(path) == 0) return view;
    bip::mapped_region region(file, access == Access::kReadOnly ? bip::read_only : bip::copy_on_write);
    view->mapping_.reset(new Mapping{std::move(file), std::move(region)});
  } catch (const bip::interprocess_exception& e) {
    if (e.get_native_error() != 0) throw_system_error("mmap", path.string(), e.get_native_error());
    throw Error(ErrorCode::kSystem, fmt::format("mmap('{}') failed: {}", path.string(), e.what()));
  } catch (const std::filesystem::filesystem_error& e) {
    throw Error(ErrorCode::kSystem, fmt::format("'{}': {}", path.string(), e.code().message()));
  }
  view->data_ = static_cast<uint8_t*>(view->mapping_->region.get_address());
  view->size_ = view->mapping_->region.get_size();
  if (access == Access::kReadOnly) {
    watch_read_only(view->data_, view->size_, "device_map disk: " + path.string());
    view->watched_ = true;
  }
  return view;
}

FileView::~FileView() {
  if (watched_) unwatch_read_only(data_);
}

}  // namespace shardcast::shm
