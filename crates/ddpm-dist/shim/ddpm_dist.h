/* ddpm_dist.h: the C ABI of ddpm-dist's shim over PyTorch's c10d (src/ffi.rs declares the same
 * functions for Rust).
 *
 * Errors: a function that can fail returns 0 on success and -1 on failure, or NULL on failure, and
 * leaves a message (without C++ backtrace) in a thread-local buffer that ddpm_dist_last_error()
 * returns; the text stays valid until the next failing call on the same thread. No C++ exception
 * crosses this boundary.
 *
 * Tensors: `tensor` is the `at::Tensor*` behind tch's `Tensor::as_mut_ptr()`. Collectives work in
 * place on its storage, which must be dense and contiguous.
 *
 * Threads: a group may be used from one thread at a time. Every entry point blocks SIGPIPE on the
 * calling thread while it runs, and the threads that c10d and Gloo start inherit that mask. This is
 * a defence: Gloo writes with writev(2), which raises SIGPIPE on a socket whose peer is gone, and
 * ddpm-cli gives SIGPIPE its default action (death). In the tests a dead peer's closed connection
 * was always read (an error) before any such write, with or without the mask.
 */
#ifndef DDPM_DIST_H
#define DDPM_DIST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ddpm_dist_group ddpm_dist_group;
typedef struct ddpm_dist_work ddpm_dist_work;

/* How to join a group. Strings are NUL-terminated; the optional ones may be NULL. */
typedef struct ddpm_dist_group_options {
  /* "gloo" or "nccl" (see ddpm_dist_has_backend). */
  const char *backend;
  /* The c10d::TCPStore of the rendezvous. */
  const char *store_host;
  uint16_t store_port;
  /* Non-zero: this process hosts the store (rank 0, unless torchrun's agent hosts it). */
  int host_store;
  int rank;
  int world_size;
  /* Rendezvous, store and collective timeout, in milliseconds (> 0). */
  int64_t timeout_ms;
  /* Prefix of every key this group writes to the store (e.g. "ddpm_dist/attempt_0/"). */
  const char *key_prefix;
  /* Gloo's TCP device: comma-separated interface names (GLOO_SOCKET_IFNAME), else an address
   * to bind, else (both NULL) c10d's default device (this host's name, else loopback). */
  const char *gloo_ifnames;
  const char *gloo_hostname;
  /* NCCL: the CUDA device of this rank (LOCAL_RANK), made the current device. */
  int device_index;
} ddpm_dist_group_options;

/* 1 when the backend ("gloo", "nccl") was compiled into the shim, else 0. */
int ddpm_dist_has_backend(const char *name);

/* Joins the group: connects to (or hosts) the store, then builds the backend, which exchanges
 * addresses with every other rank. Blocks until all ranks have joined; fails after timeout_ms. */
ddpm_dist_group *ddpm_dist_group_new(const ddpm_dist_group_options *options);
void ddpm_dist_group_free(ddpm_dist_group *group);

/* Blocking collectives: issue, then wait. */
int ddpm_dist_all_reduce_sum(ddpm_dist_group *group, void *tensor);
int ddpm_dist_broadcast(ddpm_dist_group *group, void *tensor, int root);
int ddpm_dist_barrier(ddpm_dist_group *group);

/* An all-reduce (sum) in flight. The work keeps the tensor's storage alive; the caller must not
 * read or write that storage until ddpm_dist_work_wait has returned. Free it after waiting (freeing
 * without waiting leaves the collective running in the background). */
ddpm_dist_work *ddpm_dist_all_reduce_sum_async(ddpm_dist_group *group, void *tensor);
int ddpm_dist_work_wait(ddpm_dist_work *work);
void ddpm_dist_work_free(ddpm_dist_work *work);

/* The group's key-value store (keys under the group's prefix). store_get blocks until the key
 * exists or the timeout passes; on success *data (free it with ddpm_dist_bytes_free; NULL when
 * *len is 0) holds *len bytes. */
int ddpm_dist_store_set(ddpm_dist_group *group, const char *key, const uint8_t *data, size_t len);
int ddpm_dist_store_get(ddpm_dist_group *group, const char *key, uint8_t **data, size_t *len);
void ddpm_dist_bytes_free(uint8_t *data);

const char *ddpm_dist_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* DDPM_DIST_H */
