#include "worker/node_loader.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "coordinator/bool_check.h"
#include "coordinator/catalog_wire.h"
#include "coordinator/shard_reader.h"
#include "coordinator/stage.h"
#include "core/io_stats.h"
#include "worker/load_steps.h"

namespace shardcast {
namespace {

using detail::attempt;
using detail::Clock;
using detail::seconds_since;

// Segments cross nodes in pieces of this size: bounded memory per message (MPI counts are ints; a store holds values).
constexpr uint64_t kExchangeChunk = 64ull << 20;

}  // namespace

uint64_t descriptor_tag(int load_id, uint64_t batch) {
  return static_cast<uint64_t>(load_id) << 32 | batch;
}

std::string_view placement_name(Placement placement) {
  switch (placement) {
    case Placement::kShared: return "shared";
    case Placement::kCopyOnWrite: return "cow";
    case Placement::kPrivate: return "private";
    case Placement::kCuda: return "cuda";
  }
  return "?";
}

Placement parse_placement(const std::string& name) {
  for (Placement p : {Placement::kShared, Placement::kCopyOnWrite, Placement::kPrivate, Placement::kCuda}) {
    if (name == placement_name(p)) return p;
  }
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("placement '{}' is not one of shared, cow, private, cuda", name));
}

std::string_view transport_name(Transport transport) {
  switch (transport) {
    case Transport::kAuto: return "auto";
    case Transport::kH2D: return "h2d";
    case Transport::kNccl: return "nccl";
    case Transport::kScatter: return "scatter";
  }
  return "?";
}

Transport parse_transport(const std::string& name) {
  for (Transport t : {Transport::kAuto, Transport::kH2D, Transport::kNccl, Transport::kScatter}) {
    if (name == transport_name(t)) return t;
  }
  throw Error(ErrorCode::kInvalidArgument, fmt::format("transport '{}' is not one of auto, h2d, nccl, scatter", name));
}

std::string NodeLoader::describe_segment(int load_id, const std::string& what) const {
  const Topology& t = group_.topology;
  return fmt::format("segment {} of load {} on node {} (job '{}')", what, load_id, t.node, t.job_id);
}

NodeLoader::~NodeLoader() {
  // The waits must not call into the link after it is gone.
  for (Communicator* c : {group_.world.get(), group_.node.get(), group_.leaders.get()}) {
    if (c) c->set_liveness_check({});
  }
}

void NodeLoader::link_node(Timeout timeout) {
  const Topology& t = group_.topology;
  if (link_ || t.local_size == 1) return;
  // The leader listens and sends its address; the others connect; then the node agrees that every rank is linked,
  // so that a failure anywhere fails every rank now, and a retry starts over on every rank.
  std::unique_ptr<shm::NodeLink> link;
  std::unique_ptr<Error> own;
  std::string mine;
  if (t.is_node_leader()) {
    mine = attempt([&] { link = shm::NodeLink::listen(t.rank); }, &own);
    mine = own ? "E" + mine : fmt::format("O{} {}", t.rank, link->address());
  }
  const std::string leader = group_.node->all_gather(mine, "node link: address", timeout)[0];
  std::string error;
  if (!own && (leader.empty() || leader[0] != 'O')) {
    error = fmt::format("the leader could not open the node link: {}", leader.empty() ? "" : leader.substr(1));
  } else if (!own) {
    error = attempt(
        [&] {
          if (t.is_node_leader()) {
            link->accept(t.local_size, timeout);
            return;
          }
          const size_t space = leader.find(' ');
          link = shm::NodeLink::connect(leader.substr(space + 1), std::stoi(leader.substr(1, space - 1)), t.local_rank,
                                        t.rank, timeout);
        },
        &own);
  }
  const auto outcomes = group_.node->all_gather(error, "node link: linked", timeout);
  if (own) throw *own;
  for (size_t r = 0; r < outcomes.size(); ++r) {
    if (outcomes[r].empty()) continue;
    throw Error(ErrorCode::kRemoteRankFailed,
                fmt::format("local rank {} of node {} could not link up: {}", r, t.node, outcomes[r]));
  }
  link_ = std::move(link);
  for (Communicator* c : {group_.world.get(), group_.node.get(), group_.leaders.get()}) {
    if (c) c->set_liveness_check([link = link_.get()](const std::string& what) { link->check_alive(what); });
  }
}

void NodeLoader::finish_step(const std::string& step, const std::string& my_error, const std::unique_ptr<Error>& own,
                             Timeout timeout) {
  try {
    agree(step, my_error, timeout);
    if (own) throw *own;
  } catch (const Error&) {
    if (link_) link_->discard_received();  // descriptors sent for this load, which will now never be taken
    throw;
  }
}

std::vector<KeptUse> NodeLoader::agree_on_plan(uint64_t layout_hash, const KeptUse& kept, Timeout timeout) {
  const Topology& t = group_.topology;
  const auto all =
      group_.world->all_gather(fmt::format("{:016x} {} {} {}", layout_hash, t.node, static_cast<char>(kept.state),
                                           kept.key.empty() ? "-" : kept.key),
                               "plan", timeout);
  std::vector<KeptUse> node_kept(t.node_count);
  for (size_t r = 0; r < all.size(); ++r) {
    unsigned long long hash = 0;
    int node = -1;
    char state = 0;
    char key[65] = {};
    if (std::sscanf(all[r].c_str(), "%llx %d %c %64s", &hash, &node, &state, key) != 4 || node < 0 ||
        node >= t.node_count) {
      throw Error(ErrorCode::kRemoteRankFailed, fmt::format("rank {} sent a malformed plan summary '{}'", r, all[r]));
    }
    if (hash != layout_hash) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("rank {} planned another load than rank {} (layout {:016x} vs {:016x}): every rank must "
                              "pass the same checkpoint and load options",
                              r, t.rank, hash, layout_hash),
                  {static_cast<int>(r)});
    }
    if (state == static_cast<char>(KeptState::kNone)) continue;
    node_kept[node].state = static_cast<KeptState>(state);
    node_kept[node].key = key;
  }
  return node_kept;
}

void NodeLoader::agree(const std::string& step, const std::string& my_error, Timeout timeout) {
  // Job-wide: a failure on any node stops every node (the exchange between nodes would otherwise wait for it).
  const Topology& t = group_.topology;
  const std::string mine =
      my_error.empty() ? "" : fmt::format("(local rank {} of node {}) {}", t.local_rank, t.node, my_error);
  auto outcomes = group_.world->all_gather(mine, step, timeout);
  if (!my_error.empty()) return;  // the caller rethrows its own error
  for (int r = 0; r < static_cast<int>(outcomes.size()); ++r) {
    if (outcomes[r].empty()) continue;
    throw Error(ErrorCode::kRemoteRankFailed,
                fmt::format("rank {} {} failed in '{}': {}", r, outcomes[r].substr(0, outcomes[r].find(')') + 1), step,
                            outcomes[r].substr(outcomes[r].find(')') + 2)),
                {r});
  }
}

LoadStats NodeLoader::load(const std::filesystem::path& checkpoint, const NodeLoadOptions& options,
                           const std::function<void(std::vector<LoadedTensor>&)>& consume) {
  const uint64_t read_before = checkpoint_bytes_read();
  const auto start = Clock::now();
  open(checkpoint, options.timeout);
  const double catalog_s = seconds_since(start);
  LoadStats stats = load_opened(options, consume);
  stats.phases.insert(stats.phases.begin(), {"catalog", catalog_s});
  stats.rank_bytes_read = checkpoint_bytes_read() - read_before;
  return stats;
}

// 1. Rank 0 reads the index and headers once; everyone gets the catalog.
void NodeLoader::open(const std::filesystem::path& checkpoint, Timeout timeout) {
  const Topology& topo = group_.topology;
  link_node(timeout);
  detail::kill_point("catalog", topo.rank);
  std::unique_ptr<Error> own;
  std::string wire;
  if (topo.rank == 0) {
    std::string error = attempt([&] { wire = "O" + encode_catalog(open_catalog(checkpoint)); }, &own);
    if (own) wire = "E" + error;
  }
  wire = group_.world->all_gather(topo.rank == 0 ? wire : "", "catalog", timeout)[0];
  if (own) throw *own;
  if (wire.empty() || wire[0] != 'O') {
    throw Error(ErrorCode::kRemoteRankFailed,
                fmt::format("rank 0 could not read checkpoint '{}': {}", checkpoint.string(),
                            wire.empty() ? "" : wire.substr(1)),
                {0});
  }
  catalog_ = decode_catalog(wire.substr(1));
}

LoadStats NodeLoader::load_opened(const NodeLoadOptions& options,
                                  const std::function<void(std::vector<LoadedTensor>&)>& consume) {
  const Topology& topo = group_.topology;
  const Timeout timeout = options.timeout;
  const std::filesystem::path& checkpoint = catalog_.root;
  LoadStats stats;
  auto phase = [&](const char* name, Clock::time_point start) { stats.phases.push_back({name, seconds_since(start)}); };
  std::unique_ptr<Error> own;
  auto check = [&](const std::string& step, const std::string& error) { finish_step(step, error, own, timeout); };

  // 2. Every rank computes the same plan (the layout hash proves it on attach).
  auto start = Clock::now();
  LoadRequest request = options.request;
  if (options.select) {
    // Job-wide: a rank whose module does not match (strict) stops every rank, rather than leaving them waiting.
    check("select", attempt([&] { request.tensors = options.select(catalog_); }, &own));
    request.only_listed = true;
  }
  request.one_shard_at_a_time = options.placement == Placement::kPrivate || options.placement == Placement::kCuda;
  if (options.placement == Placement::kCuda) request.map_files = MapFiles::kNever;  // the ring streams from files
  Plan plan = make_plan(catalog_, request, topo.local_size, topo.node_count);
  // Mapped segments this node reads are the checkpoint files themselves; every other segment is staged here.
  auto mapped_here = [&](size_t i) { return plan.segments[i].mapped && plan.segments[i].sole_node() == topo.node; };
  auto mine = [&](const PlannedRead& r) { return r.node == topo.node && r.reader == topo.local_rank; };
  for (size_t i = 0; i < plan.segments.size(); ++i) {
    (mapped_here(i) ? stats.node_bytes_mapped : stats.node_bytes_staged) += plan.segments[i].size;
    for (const PlannedTensor& p : plan.segments[i].tensors) {
      const bool received = plan.segments[i].mapped && !mapped_here(i);
      stats.tensor_sources.emplace_back(catalog_.tensors[p.catalog_index].name,
                                        received ? TensorSource::kReceived : p.source);
    }
  }
  stats.tensor_bytes = plan.tensor_bytes;
  stats.tensors = plan.tensor_count;
  std::vector<size_t> staged_here;  // every segment this node stages (or reuses from a kept copy)
  for (size_t i = 0; i < plan.segments.size(); ++i) {
    if (!mapped_here(i)) staged_here.push_back(i);
  }
  stats.segments = staged_here.size();
  phase("plan", start);

  // 2b. The leader reuses this node's kept copy from an earlier job, or takes the right to keep what it stages now
  // (worker/kept_load.h). Every rank learns each node's choice, and that every rank planned the same load.
  start = Clock::now();
  std::optional<KeptLoad> kept;
  if (topo.is_node_leader() && options.placement != Placement::kCuda) {
    kept.emplace(options.location, catalog_, plan, request, staged_here, options.keep_for, timeout / 2, topo.job_id);
  }
  const std::vector<KeptUse> node_kept = agree_on_plan(plan.layout_hash, kept ? kept->use() : KeptUse{}, timeout);
  const bool reused_here = node_kept[topo.node].state == KeptState::kReused;
  // A piece goes between nodes unless every node but its sender reuses a kept copy.
  auto piece_needed = [&](const SegmentPiece& piece) {
    for (int n = 0; n < topo.node_count; ++n) {
      if (n != piece.node && node_kept[n].state != KeptState::kReused) return true;
    }
    return false;
  };
  std::vector<std::shared_ptr<shm::Segment>> keep_segments(plan.segments.size());  // the leader's, while keeping
  std::vector<uint8_t> scratch;  // where a node that reuses its copy receives what the exchange sends the others
  phase("kept", start);

  const int load_id = load_count_++;
  auto describe = [&](size_t index) { return describe_segment(load_id, fmt::format("s{}", index)); };
  const shm::Access access =
      options.placement == Placement::kCopyOnWrite ? shm::Access::kCopyOnWrite : shm::Access::kReadOnly;
  // Each checkpoint file this rank maps, once per load; checked against the identity its header was read with.
  std::map<uint32_t, std::shared_ptr<shm::FileView>> files;
  auto file_of = [&](uint32_t shard) {
    auto it = files.find(shard);
    if (it == files.end()) {
      const ShardInfo& info = catalog_.shards[shard];
      it = files.emplace(shard, shm::FileView::map(info.path, access, &info.identity)).first;
    }
    return it->second;
  };

  double create_s = 0, stage_s = 0, exchange_s = 0, attach_s = 0, consume_s = 0;
  uint64_t bytes_done = 0;  // of the batches staged so far
  auto report_bytes = [&](uint64_t done) {
    if (options.on_bytes) options.on_bytes(std::min(done, plan.total_bytes), plan.total_bytes);
  };
  report_bytes(0);
  for (size_t b = 0; b < plan.batches.size(); ++b) {
    const std::vector<size_t>& batch = plan.batches[b];
    auto step = [&](const char* name) {
      detail::kill_point(name, topo.rank);
      if (options.on_step) options.on_step(name, b, plan.batches.size());
    };
    // While the batch stages, this rank sees only its own reads: scale them by its share of the batch.
    uint64_t batch_bytes = 0, my_share = 0, mine_done = 0;
    for (size_t i : batch) {
      const PlannedSegment& segment = plan.segments[i];
      batch_bytes += segment.size;
      for (const PlannedRead& r : segment.reads) {
        my_share += mine(r) ? r.count * dtype_size(segment.tensors[r.tensor].dtype) : 0;
      }
    }
    auto on_staged = [&](uint64_t bytes) {
      mine_done += bytes;
      report_bytes(bytes_done + static_cast<uint64_t>(static_cast<double>(batch_bytes) * mine_done / my_share));
    };
    // 3. The leader checks room, creates the batch's segments (unnamed, fully allocated) and hands them to the local
    // ranks over the node link.
    start = Clock::now();
    std::vector<std::shared_ptr<shm::Segment>> created(plan.segments.size());
    std::vector<File> descriptors(plan.segments.size());
    std::vector<size_t> staged;  // the batch's segments this node stages (the others it maps)
    std::vector<std::shared_ptr<shm::Segment>> reused(plan.segments.size());  // the leader's, to send from
    for (size_t i : batch) {
      if (!mapped_here(i)) staged.push_back(i);
    }
    check("create segments",
          attempt(
              [&] {
                step("create");
                if (!topo.is_node_leader()) return;
                if (load_id == 0 && b == 0) {
                  shm::remove_orphans(options.location);
                  shm::remove_expired_kept_copies(options.location);
                }
                if (staged.empty()) return;
                std::vector<int> shared;
                if (reused_here) {
                  for (size_t i : staged) {
                    descriptors[i] = kept->descriptor(i);
                    shared.push_back(descriptors[i].fd());
                  }
                } else {
                  uint64_t bytes = 0;
                  for (size_t i : staged) bytes += shm::kHeaderBytes + plan.segments[i].size;
                  shm::check_free_space(options.location, bytes, fmt::format("checkpoint '{}'", checkpoint.string()));
                  for (size_t i : staged) {
                    created[i] = shm::Segment::create(describe(i), plan.segments[i].size, plan.segments[i].layout_hash,
                                                      options.location);
                    descriptors[i] = created[i]->descriptor();
                    shared.push_back(descriptors[i].fd());
                    if (kept && kept->use().state == KeptState::kKept) keep_segments[i] = created[i];
                  }
                }
                if (link_) link_->send(shared, descriptor_tag(load_id, b), timeout);
              },
              &own));
    create_s += seconds_since(start);

    // 4. Every local rank fills the tensors the plan gave it.
    start = Clock::now();
    check("stage", attempt(
                       [&] {
                         step("stage");
                         if (!topo.is_node_leader() && !staged.empty()) {
                           std::vector<File> received = link_->receive(staged.size(), descriptor_tag(load_id, b),
                                                                       timeout, fmt::format("batch {}", b + 1));
                           for (size_t k = 0; k < staged.size(); ++k) descriptors[staged[k]] = std::move(received[k]);
                         }
                         // A leader reusing its copy sends from it in the exchange (mapped now: a failure here is
                         // agreed on, one inside the exchange would leave the other leaders waiting).
                         if (reused_here && topo.is_node_leader() && topo.node_count > 1) {
                           for (size_t i : staged) {
                             reused[i] = shm::Segment::attach(kept->descriptor(i), plan.segments[i].layout_hash,
                                                              shm::Access::kReadOnly, describe(i));
                           }
                           scratch.resize(kExchangeChunk);
                         }
                         if (!reused_here) {
                           std::vector<std::shared_ptr<shm::Segment>> writable(plan.segments.size());
                           std::vector<uint8_t*> data(plan.segments.size(), nullptr);
                           for (size_t i : staged) {
                             writable[i] = created[i] ? created[i]
                                                      : shm::Segment::attach(descriptors[i].duplicate(),
                                                                             plan.segments[i].layout_hash,
                                                                             shm::Access::kReadWrite, describe(i));
                             data[i] = writable[i]->data();
                           }
                           StageStats s =
                               stage_tensors(catalog_, plan, batch, topo.node, topo.local_rank, data, on_staged);
                           stats.rank_bytes_staged += s.bytes_written;
                         }
                         // Mapped: this rank's tensors into the page cache (read once, as staging would).
                         for (size_t i : batch) {
                           if (!mapped_here(i)) continue;
                           const PlannedSegment& segment = plan.segments[i];
                           for (const PlannedRead& r : segment.reads) {
                             if (!mine(r)) continue;
                             const PlannedTensor& p = segment.tensors[r.tensor];
                             const uint64_t size = dtype_size(p.dtype);
                             const uint64_t at = segment.file_offset + p.offset + r.first * size;
                             const std::shared_ptr<shm::FileView> file = file_of(segment.shard);
                             try {
                               file->prefetch(at, r.count * size);
                               const TensorInfo& t = catalog_.tensors[p.catalog_index];
                               if (t.dtype == DType::kBool) check_bool_bytes(t.name, file->data() + at, r.count);
                             } catch (const Error& e) {
                               throw e.with_context(shard_context(catalog_, segment.shard));
                             }
                             on_staged(r.count * size);
                           }
                         }
                       },
                       &own));
    stage_s += seconds_since(start);
    bytes_done += batch_bytes;
    report_bytes(bytes_done);

    // 4b. Across nodes, each piece of a segment was read by one node only: the leaders send it to the others.
    if (topo.node_count > 1) {
      start = Clock::now();
      check("exchange", attempt(
                            [&] {
                              step("exchange");
                              if (!topo.is_node_leader()) return;
                              for (size_t i : batch) {
                                const PlannedSegment& segment = plan.segments[i];
                                // The node that mapped a run sends it from the page cache; a node reusing its kept copy
                                // sends from that copy and receives nothing into it.
                                uint8_t* data = nullptr;
                                if (mapped_here(i)) {
                                  data = const_cast<uint8_t*>(file_of(segment.shard)->data()) + segment.file_offset;
                                } else if (reused_here) {
                                  data = reused[i]->data();
                                } else {
                                  data = created[i]->data();
                                }
                                for (const SegmentPiece& piece : segment.pieces) {
                                  if (!piece_needed(piece)) continue;
                                  for (uint64_t at = piece.begin; at < piece.end; at += kExchangeChunk) {
                                    const uint64_t length = std::min(kExchangeChunk, piece.end - at);
                                    uint8_t* buffer = data + at;
                                    if (reused_here && piece.node != topo.node) buffer = scratch.data();
                                    group_.leaders->broadcast(buffer, length, piece.node,
                                                              fmt::format("exchange segment {}", i), timeout);
                                  }
                                }
                              }
                            },
                            &own));
      exchange_s += seconds_since(start);
    }

    // 5. The leader marks the segments ready; every rank maps them for its placement. The leader's writable mappings
    // and every descriptor go: the placement's mappings alone hold the memory, and it goes with the last of them.
    start = Clock::now();
    std::vector<LoadedTensor> tensors;
    check("attach", attempt(
                        [&] {
                          step("attach");
                          for (size_t i : batch) {
                            if (created[i]) created[i]->set_state(shm::SegmentState::kReady);
                          }
                          for (size_t i : batch) {
                            const PlannedSegment& segment = plan.segments[i];
                            if (mapped_here(i)) {
                              const std::shared_ptr<shm::FileView> file = file_of(segment.shard);
                              file->check_unchanged(catalog_.shards[segment.shard].identity, "while it was loaded");
                              uint8_t* base = const_cast<uint8_t*>(file->data()) + segment.file_offset;
                              for (const PlannedTensor& p : segment.tensors) {
                                tensors.push_back({&catalog_.tensors[p.catalog_index], p.dtype, base + p.offset,
                                                   p.nbytes, nullptr, file});
                              }
                              continue;
                            }
                            auto mapping = shm::Segment::attach(std::move(descriptors[i]), plan.segments[i].layout_hash,
                                                                access, describe(i));
                            for (const PlannedTensor& p : plan.segments[i].tensors) {
                              tensors.push_back({&catalog_.tensors[p.catalog_index], p.dtype,
                                                 mapping->data() + p.offset, p.nbytes, mapping, nullptr});
                            }
                          }
                        },
                        &own));
    created.clear();
    attach_s += seconds_since(start);

    start = Clock::now();
    check("materialize", attempt(
                             [&] {
                               step("materialize");
                               consume(tensors);
                             },
                             &own));
    consume_s += seconds_since(start);
  }
  // 6. The leader names what it staged as this node's kept copy, or moves the reused copy's expiry on.
  if (kept) {
    kept->finish(keep_segments);
    stats.kept = kept->use();
  } else {
    stats.kept = node_kept[topo.node];
  }
  stats.phases.push_back({"create", create_s});
  stats.phases.push_back({"stage", stage_s});
  if (topo.node_count > 1) stats.phases.push_back({"exchange", exchange_s});
  stats.phases.push_back({"attach", attach_s});
  stats.phases.push_back({"materialize", consume_s});
  return stats;
}

}  // namespace shardcast
