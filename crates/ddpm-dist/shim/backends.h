// backends.h: the shim's internal interface to the per-backend factories. Each factory has a
// translation unit of its own, so that only that file needs the backend's third-party headers
// (gloo.cpp: gloo's, through ProcessGroupGloo.hpp; nccl.cpp: nccl.h and the CUDA headers, compiled
// only when build.rs finds them, which then defines DDPM_DIST_NCCL).
#pragma once

#include <chrono>
#include <string>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace ddpm_dist {

// Where Gloo's TCP transport listens: one device per interface in `ifnames` (comma-separated),
// else one bound to `hostname`, else (both empty) c10d's default device.
struct GlooDevice {
  std::string ifnames;
  std::string hostname;
};

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world_size, const GlooDevice& device,
                                            std::chrono::milliseconds timeout);

#ifdef DDPM_DIST_NCCL
// ProcessGroupNCCL on CUDA device `device_index` (made the current device).
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world_size, int device_index,
                                            std::chrono::milliseconds timeout);
#endif

}  // namespace ddpm_dist
