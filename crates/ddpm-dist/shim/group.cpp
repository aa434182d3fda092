// group.cpp: the C ABI of ddpm_dist.h over c10d: TCPStore + PrefixStore rendezvous, collectives
// through the c10d::Backend interface (so this file needs no gloo, NCCL or CUDA header), and the
// translation of every C++ exception into a status and a thread-local message.
#include "ddpm_dist.h"

#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "backends.h"

struct ddpm_dist_group {
  // Declared before `backend`, so destroyed after it: the backend holds the store.
  c10::intrusive_ptr<c10d::Store> user_store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

struct ddpm_dist_work {
  c10::intrusive_ptr<c10d::Work> work;
  // Keeps the tensor's storage alive while the collective may still write it.
  std::vector<at::Tensor> tensors;
};

namespace {

thread_local std::string last_error;

// Blocks SIGPIPE on this thread for the guard's lifetime (see ddpm_dist.h: threads started
// meanwhile inherit the mask). A SIGPIPE raised on this thread meanwhile is taken off before the
// old mask returns, so it cannot be delivered afterwards.
class SigpipeBlocked {
 public:
  SigpipeBlocked() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old_);
  }
  ~SigpipeBlocked() {
    if (!sigismember(&old_, SIGPIPE)) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE)) {
        sigset_t pipe;
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        const timespec now{0, 0};
        sigtimedwait(&pipe, nullptr, &now);
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlocked(const SigpipeBlocked&) = delete;
  SigpipeBlocked& operator=(const SigpipeBlocked&) = delete;

 private:
  sigset_t old_;
};

// Runs `body` with SIGPIPE blocked; an exception becomes `on_error` and a message for
// ddpm_dist_last_error().
template <class F, class R>
R guarded(F&& body, R on_error) {
  SigpipeBlocked sigpipe;
  try {
    return body();
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return on_error;
}

// The collectives' one-element tensor list; the Rust side has checked the same conditions.
std::vector<at::Tensor> tensor_list(void* tensor) {
  TORCH_CHECK(tensor != nullptr, "null tensor");
  const at::Tensor& t = *static_cast<at::Tensor*>(tensor);
  TORCH_CHECK(t.defined(), "undefined tensor");
  TORCH_CHECK(t.is_contiguous(), "collectives need a contiguous tensor, got strides ",
              t.strides());
  return {t};
}

std::string or_empty(const char* s) { return s != nullptr ? std::string(s) : std::string(); }

}  // namespace

extern "C" {

const char* ddpm_dist_last_error(void) { return last_error.c_str(); }

int ddpm_dist_has_backend(const char* name) {
  const std::string backend = or_empty(name);
#ifdef DDPM_DIST_NCCL
  if (backend == "nccl") return 1;
#endif
  return backend == "gloo" ? 1 : 0;
}

ddpm_dist_group* ddpm_dist_group_new(const ddpm_dist_group_options* o) {
  return guarded(
      [&]() -> ddpm_dist_group* {
        TORCH_CHECK(o != nullptr, "null options");
        TORCH_CHECK(o->world_size >= 1 && o->rank >= 0 && o->rank < o->world_size, "rank ",
                    o->rank, " is not in a group of ", o->world_size);
        TORCH_CHECK(o->timeout_ms > 0, "timeout must be positive, got ", o->timeout_ms, " ms");
        const std::string backend = or_empty(o->backend);
        TORCH_CHECK(ddpm_dist_has_backend(backend.c_str()) == 1, "backend `", backend,
                    "` is not built into this shim");
        const std::chrono::milliseconds timeout(o->timeout_ms);

        c10d::TCPStoreOptions store_options;
        store_options.port = o->store_port;
        store_options.isServer = o->host_store != 0;
        store_options.numWorkers = static_cast<size_t>(o->world_size);
        store_options.waitWorkers = true;
        store_options.timeout = timeout;
        // Several groups of one process may share the store's host:port.
        store_options.multiTenant = true;
        auto tcp = c10::make_intrusive<c10d::TCPStore>(or_empty(o->store_host), store_options);
        const std::string prefix = or_empty(o->key_prefix);
        // The backend's own keys and the caller's live apart, so no user key can collide with
        // Gloo's rendezvous.
        auto backend_store = c10::make_intrusive<c10d::PrefixStore>(prefix + backend, tcp);
        auto user_store = c10::make_intrusive<c10d::PrefixStore>(prefix + "user", tcp);

#ifdef DDPM_DIST_NCCL
        if (backend == "nccl") {
          return new ddpm_dist_group{
              user_store, ddpm_dist::make_nccl(backend_store, o->rank, o->world_size,
                                               o->device_index, timeout)};
        }
#endif
        const ddpm_dist::GlooDevice device{or_empty(o->gloo_ifnames), or_empty(o->gloo_hostname)};
        auto group = new ddpm_dist_group{
            user_store, ddpm_dist::make_gloo(backend_store, o->rank, o->world_size, device, timeout)};
        return group;
      },
      static_cast<ddpm_dist_group*>(nullptr));
}

void ddpm_dist_group_free(ddpm_dist_group* group) {
  guarded(
      [&]() -> int {
        delete group;
        return 0;
      },
      -1);
}

int ddpm_dist_all_reduce_sum(ddpm_dist_group* group, void* tensor) {
  return guarded(
      [&]() -> int {
        auto tensors = tensor_list(tensor);
        c10d::AllreduceOptions options;
        options.reduceOp = c10d::ReduceOp::SUM;
        group->backend->allreduce(tensors, options)->wait();
        return 0;
      },
      -1);
}

ddpm_dist_work* ddpm_dist_all_reduce_sum_async(ddpm_dist_group* group, void* tensor) {
  return guarded(
      [&]() -> ddpm_dist_work* {
        auto tensors = tensor_list(tensor);
        c10d::AllreduceOptions options;
        options.reduceOp = c10d::ReduceOp::SUM;
        auto work = group->backend->allreduce(tensors, options);
        return new ddpm_dist_work{work, tensors};
      },
      static_cast<ddpm_dist_work*>(nullptr));
}

int ddpm_dist_work_wait(ddpm_dist_work* work) {
  return guarded(
      [&]() -> int {
        work->work->wait();
        return 0;
      },
      -1);
}

void ddpm_dist_work_free(ddpm_dist_work* work) {
  guarded(
      [&]() -> int {
        delete work;
        return 0;
      },
      -1);
}

int ddpm_dist_broadcast(ddpm_dist_group* group, void* tensor, int root) {
  return guarded(
      [&]() -> int {
        auto tensors = tensor_list(tensor);
        c10d::BroadcastOptions options;
        options.rootRank = root;
        options.rootTensor = 0;
        group->backend->broadcast(tensors, options)->wait();
        return 0;
      },
      -1);
}

int ddpm_dist_barrier(ddpm_dist_group* group) {
  return guarded(
      [&]() -> int {
        group->backend->barrier(c10d::BarrierOptions())->wait();
        return 0;
      },
      -1);
}

int ddpm_dist_store_set(ddpm_dist_group* group, const char* key, const uint8_t* data,
                        size_t len) {
  return guarded(
      [&]() -> int {
        TORCH_CHECK(key != nullptr, "null key");
        TORCH_CHECK(data != nullptr || len == 0, "null data");
        std::vector<uint8_t> value(len);
        if (len > 0) {
          std::memcpy(value.data(), data, len);
        }
        group->user_store->set(std::string(key), value);
        return 0;
      },
      -1);
}

int ddpm_dist_store_get(ddpm_dist_group* group, const char* key, uint8_t** data, size_t* len) {
  return guarded(
      [&]() -> int {
        TORCH_CHECK(key != nullptr && data != nullptr && len != nullptr, "null argument");
        *data = nullptr;
        *len = 0;
        const std::vector<uint8_t> value = group->user_store->get(std::string(key));
        if (!value.empty()) {
          auto* copy = static_cast<uint8_t*>(std::malloc(value.size()));
          TORCH_CHECK(copy != nullptr, "out of memory for a ", value.size(), "-byte value");
          std::memcpy(copy, value.data(), value.size());
          *data = copy;
          *len = value.size();
        }
        return 0;
      },
      -1);
}

void ddpm_dist_bytes_free(uint8_t* data) { std::free(data); }

}  // extern "C"
