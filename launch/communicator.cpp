#include "launch/communicator.h"

#include <unistd.h>

#include <map>

#include "core/error.h"

namespace shardcast {

void Communicator::barrier(const std::string& what, Timeout timeout) {
  all_gather("", what, timeout);
}

std::string Communicator::node_key(Timeout) {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}

namespace {

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string kind() const override { return "self"; }
  std::vector<std::string> all_gather(const std::string& mine, const std::string&, Timeout) override { return {mine}; }
  void broadcast(void*, size_t, int, const std::string&, Timeout) override {}
  std::unique_ptr<Communicator> split(int, int, const std::string&, Timeout) override {
    return std::make_unique<SelfCommunicator>();
  }
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() {
  return std::make_unique<SelfCommunicator>();
}

}  // namespace shardcast
