// SPDX-License-Identifier: GPL-2.0
/*
 * dmcore C shim: see shim.h. Each module links its own copy (rust/<target>/shim.c includes this
 * file), because kbuild refuses to add one object to several modules.
 */
#include <crypto/hash.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/highmem.h>
#include <linux/net.h>
#include <linux/nsproxy.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/spinlock.h>
#include <linux/mm.h>
#include <linux/ioprio.h>
#include <net/net_namespace.h>
#include <net/sock.h>
#include <linux/tcp.h>
#include <linux/key.h>
#include <linux/key-type.h>
#include <linux/random.h>
#include <linux/timekeeping.h>
#include <keys/user-type.h>
#include <kunit/test.h>

#include "shim.h"

void dmcore_bio_set_dev(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
}

void dmcore_bio_advance(struct bio *bio, unsigned int bytes)
{
	bio_advance(bio, bytes);
}

/* One step of bio_for_each_segment(): single-page segments, honours bi_bvec_done. */
bool dmcore_bio_next_segment(struct bio *bio, struct bvec_iter *iter, struct bio_vec *out)
{
	if (!iter->bi_size)
		return false;
	*out = bio_iter_iovec(bio, *iter);
	bio_advance_iter_single(bio, iter, out->bv_len);
	return true;
}

void *dmcore_kmap_local_page(struct page *page)
{
	return kmap_local_page(page);
}

void dmcore_kunmap_local(const void *addr)
{
	kunmap_local(addr);
}

unsigned int dmcore_memalloc_noio_save(void)
{
	return memalloc_noio_save();
}

void dmcore_memalloc_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}

void dmcore_spin_lock_init(spinlock_t *lock)
{
	spin_lock_init(lock);
}

unsigned long dmcore_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void dmcore_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

void dmcore_limits_stable_writes(struct queue_limits *lim)
{
	lim->features |= BLK_FEAT_STABLE_WRITES;
}

unsigned short dmcore_ioprio_default(void)
{
	return IOPRIO_DEFAULT;
}

bool dmcore_is_vmalloc_addr(const void *p)
{
	return is_vmalloc_addr(p);
}

void dmcore_init_completion(struct completion *c)
{
	init_completion(c);
}

void dmcore_reinit_completion(struct completion *c)
{
	reinit_completion(c);
}

struct net *dmcore_get_current_net(void)
{
	return get_net(current->nsproxy->net_ns);
}

struct net *dmcore_get_net(struct net *net)
{
	return get_net(net);
}

void dmcore_put_net(struct net *net)
{
	put_net(net);
}

/*
 * Settings every dmcore socket gets (as DRBD and NBD do): allocations in the network stack for
 * this socket never recurse into block I/O, no use of the task's page fragment (a writeback
 * context may already be using it), no Nagle delay, and bounded blocking operations.
 */
void dmcore_sock_tune(struct socket *sock, long sndtimeo, long rcvtimeo)
{
	struct sock *sk = sock->sk;

	lock_sock(sk);
	sk->sk_allocation = GFP_NOIO;
	sk->sk_use_task_frag = false;
	sk->sk_sndtimeo = sndtimeo;
	sk->sk_rcvtimeo = rcvtimeo;
	release_sock(sk);
	if (sk->sk_protocol == IPPROTO_TCP)
		tcp_sock_set_nodelay(sk);
}

/*
 * Room in the socket's send buffer (sk_stream_wspace: sndbuf less what is queued, in bytes of
 * buffer memory, which counts skb overhead) and what is queued. Read without the socket lock:
 * a hint for the caller's decision to send, which sends with its own timeout anyway.
 */
int dmcore_sock_send_space(struct socket *sock, int *queued)
{
	struct sock *sk = sock->sk;

	*queued = READ_ONCE(sk->sk_wmem_queued);
	return sk_stream_wspace(sk);
}

/*
 * For a sender that checks dmcore_sock_send_space before it sends: raises the socket's send
 * buffer to at least `bytes`, leaving TCP's autotuning on (it only grows the buffer; under TCP
 * memory pressure the stack may still shrink it), and turns TCP_NOTSENT_LOWAT off for this
 * socket (a send would otherwise also wait while unsent bytes exceed the
 * net.ipv4.tcp_notsent_lowat sysctl, whatever the free space says).
 */
void dmcore_sock_send_setup(struct socket *sock, int bytes)
{
	struct sock *sk = sock->sk;

	lock_sock(sk);
	if (sk->sk_sndbuf < bytes)
		WRITE_ONCE(sk->sk_sndbuf, bytes);
	if (sk->sk_protocol == IPPROTO_TCP)
		WRITE_ONCE(tcp_sk(sk)->notsent_lowat, UINT_MAX);
	release_sock(sk);
}

void dmcore_kunit_fail(struct kunit *test, const char *file, int line, const char *msg)
{
	KUNIT_FAIL(test, "%s:%d: %s", file, line, msg);
}

int dmcore_hmac_sha256_new(const u8 *key, unsigned int keylen, void **tfm)
{
	struct crypto_shash *t = crypto_alloc_shash("hmac(sha256)", 0, 0);
	int r;

	if (IS_ERR(t))
		return PTR_ERR(t);
	r = crypto_shash_setkey(t, key, keylen);
	if (r) {
		crypto_free_shash(t);
		return r;
	}
	*tfm = t;
	return 0;
}

int dmcore_hmac_sha256_digest(void *tfm, const u8 *const *parts, const unsigned int *lens,
			      unsigned int n, u8 *out)
{
	struct crypto_shash *t = tfm;
	SHASH_DESC_ON_STACK(desc, t);
	unsigned int i;
	int r;

	if (n > 8 || crypto_shash_digestsize(t) != 32)
		return -EINVAL;
	desc->tfm = t;
	r = crypto_shash_init(desc);
	for (i = 0; !r && i < n; i++)
		r = crypto_shash_update(desc, parts[i], lens[i]);
	if (!r)
		r = crypto_shash_final(desc, out);
	shash_desc_zero(desc);
	return r;
}

void dmcore_hmac_sha256_free(void *tfm)
{
	crypto_free_shash(tfm);
}

int dmcore_read_key(const char *desc, u8 *buf, unsigned int buflen)
{
	const struct user_key_payload *ukp;
	struct key *key;
	int r;

	key = request_key(&key_type_user, desc, NULL);
	if (IS_ERR(key))
		key = request_key(&key_type_logon, desc, NULL);
	if (IS_ERR(key))
		return PTR_ERR(key);
	down_read(&key->sem);
	ukp = user_key_payload_locked(key);
	if (!ukp) {
		r = -EKEYREVOKED;
	} else if (ukp->datalen > buflen) {
		r = -EMSGSIZE;
	} else {
		memcpy(buf, ukp->data, ukp->datalen);
		r = ukp->datalen;
	}
	up_read(&key->sem);
	key_put(key);
	return r;
}

u64 dmcore_real_time_ns(void)
{
	return ktime_get_real_ns();
}

void dmcore_random_bytes(u8 *buf, unsigned int len)
{
	get_random_bytes(buf, len);
}
