/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dmcore C shim: wrappers for the `static inline` functions and macros that Rust cannot call
 * directly. Only rust/dmcore uses these (through bindgen). Keep this file small: logic belongs
 * in Rust.
 */
#ifndef WBREPL_DMCORE_SHIM_H
#define WBREPL_DMCORE_SHIM_H

#include <linux/types.h>
#include <linux/spinlock_types.h>

struct bio;
struct bio_vec;
struct bvec_iter;
struct block_device;
struct completion;
struct kunit;
struct net;
struct page;
struct socket;

/* bio helpers */
void dmcore_bio_set_dev(struct bio *bio, struct block_device *bdev);
void dmcore_bio_advance(struct bio *bio, unsigned int bytes);
bool dmcore_bio_next_segment(struct bio *bio, struct bvec_iter *iter, struct bio_vec *out);
void *dmcore_kmap_local_page(struct page *page);
void dmcore_kunmap_local(const void *addr);

/* memory allocation scope: no I/O recursion */
unsigned int dmcore_memalloc_noio_save(void);
void dmcore_memalloc_noio_restore(unsigned int flags);

/* interrupt-safe spinlocks */
void dmcore_spin_lock_init(spinlock_t *lock);
unsigned long dmcore_spin_lock_irqsave(spinlock_t *lock);
void dmcore_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);

/* queue limits: ask for stable pages during writes (BLK_FEAT_STABLE_WRITES) */
void dmcore_limits_stable_writes(struct queue_limits *lim);

/* I/O priority for dm-io requests (IOPRIO_DEFAULT is not a constant expression) */
unsigned short dmcore_ioprio_default(void);

/* memory */
bool dmcore_is_vmalloc_addr(const void *p);

/* completions */
void dmcore_init_completion(struct completion *c);
void dmcore_reinit_completion(struct completion *c);

/*
 * HMAC-SHA256 (the crypto API's "hmac(sha256)" shash). The transform is passed as void * so
 * that bindgen needs no crypto types. _new returns 0 and stores the keyed transform in *tfm,
 * or a negative errno. _digest hashes the concatenation of n parts (n <= 8) into out[32].
 */
int dmcore_hmac_sha256_new(const u8 *key, unsigned int keylen, void **tfm);
int dmcore_hmac_sha256_digest(void *tfm, const u8 *const *parts, const unsigned int *lens,
			      unsigned int n, u8 *out);
void dmcore_hmac_sha256_free(void *tfm);

/*
 * Kernel keyring: copies the payload of the "user" (or else "logon") key with this description,
 * found with request_key() in the calling task's keyrings, into buf. Returns its length, or
 * -ENOKEY / -EKEYREVOKED / ..., or -EMSGSIZE when it is longer than buflen.
 */
int dmcore_read_key(const char *desc, u8 *buf, unsigned int buflen);

/* wall-clock time, ns since the Unix epoch (ktime_get_real_ns) */
u64 dmcore_real_time_ns(void);

/* random bytes (get_random_bytes) */
void dmcore_random_bytes(u8 *buf, unsigned int len);

/* network namespaces and sockets */
struct net *dmcore_get_current_net(void);
struct net *dmcore_get_net(struct net *net);
void dmcore_put_net(struct net *net);
void dmcore_sock_tune(struct socket *sock, long sndtimeo, long rcvtimeo);
int dmcore_sock_send_space(struct socket *sock, int *queued);
void dmcore_sock_send_setup(struct socket *sock, int bytes);

/* KUnit: record a failure of the running case (KUNIT_FAIL) */
void dmcore_kunit_fail(struct kunit *test, const char *file, int line, const char *msg);

#endif
