// Load a checkpoint into an existing torch::nn::Module on every rank of an MPI job, with one host copy per node.
//
//   mpirun -np 4 build/examples/load_into_module /tmp/tiny-lm
//
// If the checkpoint does not exist yet, rank 0 first saves one from a freshly initialised model, so the example
// runs anywhere. Every rank then builds its own model, loads into it, and checks the weights arrived.
#include <cstdio>

#include <torch/torch.h>

#include <shardcast/shardcast.h>

struct TinyLM : torch::nn::Module {
  TinyLM()
      : embed(register_module("embed", torch::nn::Embedding(1000, 64))),
        norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({64})))),
        head(register_module("head", torch::nn::Linear(torch::nn::LinearOptions(64, 1000).bias(false)))) {}
  torch::nn::Embedding embed;
  torch::nn::LayerNorm norm;
  torch::nn::Linear head;
};

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR\n", argv[0]);
    return 2;
  }
  const std::string checkpoint = argv[1];
  try {
    shardcast::Session session = shardcast::Session::from_env();
    const auto& topo = session.topology();

    torch::manual_seed(42);
    TinyLM reference;  // what the checkpoint holds: the same seed on every rank
    if (topo.rank == 0 && !std::filesystem::exists(checkpoint)) {
      shardcast::save_sharded(reference.named_parameters(), checkpoint, "100kB");
    }

    TinyLM model;  // a fresh, randomly initialised model, as a training script builds it
    shardcast::LoadOptions options;
    options.placement = shardcast::Placement::kCopyOnWrite;  // trainable: writes stay in this rank
    shardcast::LoadReport report = session.load_into(model, checkpoint, options, /*strict=*/true);

    bool same = true;
    for (const auto& p : reference.named_parameters())
      same &= torch::equal(p.value(), model.named_parameters()[p.key()]);
    std::printf("rank %d/%d (local %d/%d): loaded %zu tensors, %zu missing, %zu unexpected; weights %s\n", topo.rank,
                topo.world_size, topo.local_rank, topo.local_size, report.loaded, report.missing_keys.size(),
                report.unexpected_keys.size(), same ? "match" : "DIFFER");
    return same ? 0 : 1;
  } catch (const shardcast::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
