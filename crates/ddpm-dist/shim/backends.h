// backends.h: the shim's internal interface to the per-backend factories. Each factory has a
// translation unit of its own, so that only that file needs the backend's third-party headers
// (gloo.cpp: gloo's, through ProcessGroupGloo.hpp). NCCL is the next one: a nccl.cpp defining
// make_nccl, compiled with USE_C10D_NCCL against nccl.h and the CUDA runtime headers.
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

}  // namespace ddpm_dist
