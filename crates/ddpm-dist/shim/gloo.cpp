// gloo.cpp: builds c10d::ProcessGroupGloo. The only translation unit that includes
// ProcessGroupGloo.hpp, whose gloo includes come from gloo_decls/ (see its README) unless the build
// names real gloo headers.
#include "backends.h"

#include <sstream>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace ddpm_dist {

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world_size, const GlooDevice& device,
                                            std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  if (!device.ifnames.empty()) {
    // As torch.distributed reads GLOO_SOCKET_IFNAME: one device per comma-separated name.
    std::stringstream names(device.ifnames);
    std::string name;
    while (std::getline(names, name, ',')) {
      if (!name.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      }
    }
    TORCH_CHECK(!options->devices.empty(), "GLOO_SOCKET_IFNAME=\"", device.ifnames,
                "\" names no interface");
  } else if (!device.hostname.empty()) {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(device.hostname));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

}  // namespace ddpm_dist
