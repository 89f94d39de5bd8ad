// Placement cuda: the selected tensors stream through a ring of pinned node-shared host buffers onto every rank's
// device. The job moves in lockstep, one chunk per step, and agrees after each step (so any rank's failure stops all,
// with its reason). With S buffers, step k fills chunk k+S-1 from storage while chunk k drains to the devices.
#include <algorithm>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)

#include "coordinator/bool_check.h"
#include "coordinator/stream_plan.h"
#include "core/file.h"
#include "core/size.h"
#include "worker/load_steps.h"
#include "worker/node_loader.h"

namespace shardcast {
namespace {

using detail::attempt;
using detail::Clock;
using detail::seconds_since;

constexpr int kRoot = 0;                     // reads (on node 0) and sends every chunk under nccl and scatter
constexpr uint64_t kRingBatch = 0xffffffff;  // the ring's descriptor tag on the node link

}  // namespace

LoadStats NodeLoader::load_to_device(const NodeLoadOptions& options, const RingOptions& ring, Device& device,
                                     const DeviceTensorSink& sink) {
  const Topology& topo = group_.topology;
  const Timeout timeout = options.timeout;
  LoadStats stats;
  stats.device = device.describe();
  std::unique_ptr<Error> own;
  auto check = [&](const std::string& step, const std::string& error) { finish_step(step, error, own, timeout); };

  // What to load, and how: the plan validates the selection and the dtype; the stream plan orders the bytes.
  auto start = Clock::now();
  const TensorParallel& tp = options.tp;
  tp_for_rank(tp, topo.rank, topo.world_size);  // checks the size
  if (ring.slots < 2 || ring.slot_bytes == 0) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("the ring needs at least 2 buffers of at least 1 byte (one fills while one drains), not "
                            "{} of {} bytes",
                            ring.slots, ring.slot_bytes));
  }
  LoadRequest request = options.request;
  if (options.select) {
    request.tensors = options.select(catalog_);
    request.only_listed = true;
  }
  const Plan plan = make_plan(catalog_, request, 1, 1);
  std::vector<uint32_t> wanted;
  std::map<uint32_t, DType> target;
  for (const PlannedSegment& segment : plan.segments) {
    for (const PlannedTensor& p : segment.tensors) {
      wanted.push_back(p.catalog_index);
      target[p.catalog_index] = p.dtype;
    }
  }
  const StreamPlan stream = make_stream_plan(catalog_, wanted, ring.slot_bytes);
  const uint64_t chunks = stream.chunk_count();
  const uint64_t slot_size = std::max<uint64_t>(1, std::min(ring.slot_bytes, stream.total_bytes));
  stats.tensors = stream.tensors.size();
  stats.tensor_bytes = plan.tensor_bytes;

  Transport transport = ring.transport;
  if (transport == Transport::kAuto) {
    transport = topo.node_count == 1 ? Transport::kH2D : Transport::kScatter;
    stats.transport_choice =
        topo.node_count == 1
            ? "auto chose h2d: one node, so every GPU copies what it needs from the node's pinned ring over its own "
              "PCIe link"
            : fmt::format(
                  "auto chose scatter: {} nodes, so rank 0 alone reads each byte and NCCL sends it on "
                  "(broadcast, or each rank's slice alone for chunks of only tensor-parallel slices)",
                  topo.node_count);
  } else {
    stats.transport_choice = fmt::format("{} as asked", transport_name(transport));
  }
  const bool h2d = transport == Transport::kH2D;
  // Every node holds a ring under h2d; under nccl and scatter only rank 0's node (node 0) does.
  const bool ring_here = h2d || topo.node == 0;
  const bool copies_from_ring = h2d || topo.rank == kRoot;

  auto tp_of = [&](int rank) { return tp_for_rank(tp, rank, topo.world_size); };
  auto is_sliced = [&](const StreamedTensor& s) {
    return tp.size > 1 && find_slice_rule(tp, catalog_.tensors[s.catalog_index].name) != nullptr;
  };

  // Each rank's device tensors (its slice, in the checkpoint's dtype until complete).
  std::vector<RankSlice> mine(stream.tensors.size());
  std::vector<uint8_t*> destination(stream.tensors.size(), nullptr);
  std::vector<bool> completed(stream.tensors.size(), false);
  std::vector<std::set<std::string>> arrived_by(stream.tensors.size());
  auto complete_through = [&](uint64_t end) {  // every tensor whose bytes all lie before stream offset `end`
    for (size_t i = 0; i < stream.tensors.size(); ++i) {
      const StreamedTensor& s = stream.tensors[i];
      if (completed[i] || s.offset + s.nbytes > end) continue;
      sink.complete(catalog_.tensors[s.catalog_index]);
      completed[i] = true;
    }
  };
  check("allocate on device", attempt(
                                  [&] {
                                    for (size_t i = 0; i < stream.tensors.size(); ++i) {
                                      const StreamedTensor& s = stream.tensors[i];
                                      const TensorInfo& info = catalog_.tensors[s.catalog_index];
                                      mine[i] = rank_slice(info, tp_of(topo.rank));
                                      destination[i] = sink.allocate(info, mine[i], target.at(s.catalog_index));
                                    }
                                    device.synchronize();  // torch's earlier work on this memory is done
                                    complete_through(0);   // empty tensors at the start
                                  },
                                  &own));
  stats.phases.push_back({"plan+allocate", seconds_since(start)});

  // The ring: one node-shared segment of S buffers, created by the node leader, handed to the local ranks over the
  // node link and pinned by the ranks that copy from it.
  start = Clock::now();
  const int load_id = load_count_++;
  const std::string ring_name = describe_segment(load_id, "ring");
  const uint64_t ring_bytes = static_cast<uint64_t>(ring.slots) * slot_size;
  std::shared_ptr<shm::Segment> ring_segment;
  check("create ring",
        attempt(
            [&] {
              detail::kill_point("ring", topo.rank);
              if (!ring_here || !topo.is_node_leader()) return;
              if (load_id == 0) shm::remove_orphans(options.location);
              shm::check_free_space(options.location, shm::kHeaderBytes + ring_bytes,
                                    fmt::format("the GPU ring ({} x {})", ring.slots, format_size(slot_size)));
              ring_segment = shm::Segment::create(ring_name, ring_bytes, plan.layout_hash, options.location);
              const File shared = ring_segment->descriptor();
              if (link_) link_->send({shared.fd()}, descriptor_tag(load_id, kRingBatch), timeout);
            },
            &own));
  std::optional<PinnedHost> pinned;
  check("attach ring",
        attempt(
            [&] {
              if (!ring_here) return;
              if (!ring_segment) {
                ring_segment = shm::Segment::attach(
                    std::move(link_->receive(1, descriptor_tag(load_id, kRingBatch), timeout, ring_name)[0]),
                    plan.layout_hash, shm::Access::kReadWrite, ring_name);
              }
              if (copies_from_ring) {
                pinned.emplace(device, ring_segment->data(), ring_bytes, /*read_only=*/false);
              }
            },
            &own));
  if (ring_here) stats.ring_bytes = stats.node_bytes_staged = ring_bytes;
  stats.phases.push_back({"ring", seconds_since(start)});

  // Step work.
  start = Clock::now();
  auto slot = [&](uint64_t chunk) { return ring_segment->data() + (chunk % ring.slots) * slot_size; };
  auto chunk_length = [&](uint64_t chunk) { return stream.chunk_end(chunk) - stream.chunk_begin(chunk); };
  // Each reading rank splits its share of a chunk over threads: one pread stream does not keep up with a PCIe 5 link.
  const bool reads_here = ring_here && (request.parallel_read || topo.is_node_leader());
  const int parts = request.parallel_read ? topo.local_size : 1, part = request.parallel_read ? topo.local_rank : 0;
  const int threads = static_cast<int>(std::clamp<unsigned>(std::thread::hardware_concurrency() / parts, 1, 8));
  std::vector<std::map<uint32_t, File>> files(threads);  // per thread, opened on first use
  const BoolRanges bool_ranges(catalog_);
  auto read_part = [&](uint64_t chunk, int thread) {
    for (const FileRead& read : chunk_reads(catalog_, stream, chunk, part * threads + thread, parts * threads)) {
      try {
        auto it = files[thread].find(read.shard);
        if (it == files[thread].end()) {
          it = files[thread].emplace(read.shard, File::open_read(catalog_.shards[read.shard].path)).first;
        }
        it->second.read_exact_at(slot(chunk) + read.slot_offset, read.length, read.file_offset);
        bool_ranges.check(read.shard, read.file_offset, slot(chunk) + read.slot_offset, read.length);
      } catch (const Error& e) {
        throw e.with_context(shard_context(catalog_, read.shard));
      }
    }
  };
  auto fill = [&](uint64_t chunk) {
    if (!reads_here || chunk >= chunks) return;
    std::vector<std::future<void>> helpers;
    for (int t = 1; t < threads; ++t) helpers.push_back(std::async(std::launch::async, read_part, chunk, t));
    read_part(chunk, 0);
    for (auto& helper : helpers) helper.get();  // rethrows a helper's error
  };
  // fn(tensor, piece) for every piece of `rank`'s slices in `chunk`; piece.src is relative to the chunk's start.
  auto for_pieces = [&](int rank, uint64_t chunk, const std::function<void(size_t, const CopyBlock&)>& fn) {
    const uint64_t begin = stream.chunk_begin(chunk), end = stream.chunk_end(chunk);
    for (size_t i = stream.first_tensor_after(begin); i < stream.tensors.size() && stream.tensors[i].offset < end;
         ++i) {
      const StreamedTensor& s = stream.tensors[i];
      CopyBlock block =
          rank == topo.rank ? mine[i].block : rank_slice(catalog_.tensors[s.catalog_index], tp_of(rank)).block;
      block.src += s.offset;
      for (CopyBlock piece : clip(block, begin, end)) {
        piece.src -= begin;
        fn(i, piece);
      }
    }
  };
  auto to_mine = [&](uint64_t chunk, const uint8_t* source, Lane lane, const char* how) {
    uint64_t bytes = 0;
    for_pieces(topo.rank, chunk, [&](size_t i, const CopyBlock& piece) {
      device.copy(piece, destination[i], source, lane);
      arrived_by[i].insert(how);
      bytes += piece.bytes();
    });
    return bytes;
  };
  // Under nccl a chunk is broadcast; under scatter too, unless every tensor in it is a tensor-parallel slice.
  auto broadcast_chunk = [&](uint64_t chunk) {
    if (transport == Transport::kNccl) return true;
    const uint64_t begin = stream.chunk_begin(chunk), end = stream.chunk_end(chunk);
    for (size_t i = stream.first_tensor_after(begin); i < stream.tensors.size() && stream.tensors[i].offset < end;
         ++i) {
      if (!is_sliced(stream.tensors[i])) return true;
    }
    return false;
  };
  auto send_on = [&](uint64_t chunk) {  // chunk is on the root's GPU in scratch (chunk % 2)
    uint8_t* on_device = device.scratch(static_cast<int>(chunk % 2), slot_size);
    if (broadcast_chunk(chunk)) {
      device.broadcast(on_device, chunk_length(chunk), kRoot);
      if (topo.rank != kRoot) stats.rank_bytes_received += chunk_length(chunk);
      to_mine(chunk, on_device, Lane::kComm, "broadcast");
      return;
    }
    // Scatter: the root packs each rank's pieces back to back; each rank unpacks its own in the same order.
    std::vector<size_t> sizes(topo.world_size, 0);
    for (int r = 0; r < topo.world_size; ++r) {
      for_pieces(r, chunk, [&](size_t, const CopyBlock& piece) { sizes[r] += piece.bytes(); });
    }
    size_t total = 0;
    for (size_t s : sizes) total += s;
    std::vector<const uint8_t*> sends(topo.world_size, nullptr);
    if (topo.rank == kRoot) {
      uint8_t* packed = device.scratch(2, total);
      uint64_t at = 0;
      for (int r = 0; r < topo.world_size; ++r) {
        sends[r] = packed + at;
        for_pieces(r, chunk, [&](size_t, const CopyBlock& piece) {
          device.copy(CopyBlock{piece.src, at, piece.width, piece.rows, piece.src_pitch, piece.width}, packed,
                      on_device, Lane::kComm);
          at += piece.bytes();
        });
      }
    }
    uint8_t* received = device.scratch(3, sizes[topo.rank]);
    device.scatter(sends, sizes, received, kRoot);
    if (topo.rank != kRoot) stats.rank_bytes_received += sizes[topo.rank];
    uint64_t at = 0;
    for_pieces(topo.rank, chunk, [&](size_t i, const CopyBlock& piece) {
      device.copy(CopyBlock{at, piece.dst, piece.width, piece.rows, piece.width, piece.dst_pitch}, destination[i],
                  received, Lane::kComm);
      arrived_by[i].insert("scatter");
      at += piece.bytes();
    });
  };

  // Prologue: the first S-1 chunks.
  check("fill ring", attempt(
                         [&] {
                           for (int k = 0; k + 1 < ring.slots; ++k) fill(k);
                         },
                         &own));
  // h2d: step k drains chunk k. nccl/scatter: step k copies chunk k to the root's GPU while chunk k-1 goes out over
  // NCCL (one step behind, so the host-to-device copy and the collective overlap).
  const uint64_t steps = h2d ? chunks : chunks + 1;
  for (uint64_t k = 0; k < steps; ++k) {
    check(fmt::format("stream chunk {}/{}", k + 1, steps),
          attempt(
              [&] {
                detail::kill_point("stream", topo.rank);
                if (options.on_step) options.on_step("stream", k, steps);
                if (h2d) {
                  stats.rank_bytes_to_device += to_mine(k, slot(k), Lane::kCopy, "h2d");
                } else {
                  if (topo.rank == kRoot && k < chunks) {
                    const uint64_t n = chunk_length(k);
                    device.copy(CopyBlock{0, 0, n, 1, n, n}, device.scratch(static_cast<int>(k % 2), slot_size),
                                slot(k), Lane::kCopy);
                    stats.rank_bytes_to_device += n;
                  }
                  if (k >= 1) send_on(k - 1);
                }
                fill(k + ring.slots - 1);
                device.synchronize();
                const uint64_t done = h2d ? k : k - 1;
                if (h2d || k >= 1) complete_through(stream.chunk_end(done));
                if (options.on_bytes && (h2d || k >= 1)) options.on_bytes(stream.chunk_end(done), stream.total_bytes);
              },
              &own));
  }
  check("finish", attempt([&] { complete_through(stream.total_bytes); }, &own));
  stats.phases.push_back({"stream", seconds_since(start)});

  for (size_t i = 0; i < stream.tensors.size(); ++i) {
    std::string how = arrived_by[i].empty() ? "empty" : fmt::format("{}", fmt::join(arrived_by[i], "+"));
    ++stats.transports[how];
  }
  return stats;
}

}  // namespace shardcast
