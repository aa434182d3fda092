// nccl.cpp: builds c10d::ProcessGroupNCCL. Compiled only when build.rs finds libtorch_cuda and the
// headers ProcessGroupNCCL.hpp needs (nccl.h and the CUDA runtime headers from the torch wheel's
// nvidia-* dependencies, crt/host_config.h and nv/target from the nvidia-cuda-crt and
// nvidia-cuda-cccl wheels); it then defines DDPM_DIST_NCCL for group.cpp.
#include "backends.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

namespace ddpm_dist {

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world_size, int device_index,
                                            std::chrono::milliseconds timeout) {
  const auto devices = static_cast<int>(c10::cuda::device_count());
  TORCH_CHECK(device_index >= 0 && device_index < devices, "NCCL needs CUDA device ",
              device_index, " (LOCAL_RANK) but this process sees ", devices, " CUDA device(s)");
  // As torch.cuda.set_device(LOCAL_RANK): NCCL's communicators and the barrier use the current
  // device.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
}

}  // namespace ddpm_dist
