// SPDX-License-Identifier: GPL-2.0

//! Kernel TCP sockets (IPv4) for replication links.
//!
//! Every socket is tuned like DRBD's and NBD's: `sk_allocation = GFP_NOIO`, no task page
//! fragment, `TCP_NODELAY`; sends and receives also run in a [`NoIoScope`], so nothing on the
//! replication path can recurse into block I/O. Sockets live in a network namespace held by a
//! [`NetNs`] reference (kernel sockets do not pin their namespace themselves).

use super::bindings::{self, ffi};
use super::errno::{econnreset, etimedout};
use super::mem::NoIoScope;
use crate::wbrepl_core::parse::SocketAddrV4;
use core::ptr::NonNull;
use kernel::error::{code::*, Error, Result};

/// A reference to a network namespace (`get_net`/`put_net`).
///
/// # Invariants
///
/// `net` holds one reference taken with `get_net`, dropped in `Drop`.
pub struct NetNs {
    net: NonNull<bindings::net>,
}

// SAFETY: namespace references may be used and dropped from any thread.
unsafe impl Send for NetNs {}
// SAFETY: `&NetNs` only hands the pointer to thread-safe socket creation.
unsafe impl Sync for NetNs {}

impl NetNs {
    /// The network namespace of the calling task (for a table load: of the `dmsetup` process,
    /// so `ip netns exec B dmsetup create ...` builds a target that talks from namespace B).
    pub fn current() -> Self {
        // SAFETY: called from process context; returns a new reference to a live namespace.
        let net = unsafe { bindings::dmcore_get_current_net() };
        // INVARIANT: `get_net` never returns null for a live task's namespace.
        // SAFETY: as above.
        Self { net: unsafe { NonNull::new_unchecked(net) } }
    }

    /// Another reference to the same namespace.
    pub fn clone_ref(&self) -> Self {
        // SAFETY: we hold a reference, so the namespace is live; `get_net` takes another one
        // and returns its argument.
        unsafe { bindings::dmcore_get_net(self.net.as_ptr()) };
        // INVARIANT: a new reference was taken above.
        Self { net: self.net }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // SAFETY: drops the reference taken at construction (type invariant).
        unsafe { bindings::dmcore_put_net(self.net.as_ptr()) };
    }
}

fn to_sockaddr(a: SocketAddrV4) -> bindings::sockaddr_in {
    let mut sa = bindings::sockaddr_in::default();
    sa.sin_family = bindings::AF_INET as u16;
    sa.sin_port = a.port.to_be();
    sa.sin_addr.s_addr = u32::from_be_bytes(a.ip).to_be();
    sa
}

fn from_sockaddr(sa: &bindings::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4 { ip: u32::from_be(sa.sin_addr.s_addr).to_be_bytes(), port: u16::from_be(sa.sin_port) }
}

fn jiffies_or_forever(ms: u32) -> ffi::c_long {
    if ms == 0 {
        ffi::c_long::MAX // MAX_SCHEDULE_TIMEOUT
    } else {
        kernel::time::msecs_to_jiffies(ms) as ffi::c_long
    }
}

/// Whether `e` is a socket timeout (see [`Socket::set_timeouts`]).
pub fn is_timeout(e: &Error) -> bool {
    e.to_errno() == etimedout().to_errno()
}

/// Maps "timed out" (`-EAGAIN` from a socket timeout) to `ETIMEDOUT`, other errnos unchanged.
fn sock_err(r: i32) -> Error {
    if r == -(bindings::EAGAIN as i32) {
        etimedout()
    } else {
        Error::from_errno(r)
    }
}

/// A kernel TCP socket, shut down and released when dropped.
///
/// `&Socket` may be used from several threads at once (say, a sender and a receiver); callers
/// serialise their own sends (or receives) when messages must not interleave.
///
/// # Invariants
///
/// `sock` was created by `sock_create_kern` (or `kernel_accept`) in `net`'s namespace, is tuned
/// with `dmcore_sock_tune`, and is released only in `Drop`.
pub struct Socket {
    sock: NonNull<bindings::socket>,
    _net: NetNs,
}

// SAFETY: socket operations lock the socket internally and may run on any thread.
unsafe impl Send for Socket {}
// SAFETY: as above.
unsafe impl Sync for Socket {}

impl Socket {
    fn create(ns: &NetNs) -> Result<Self> {
        let mut sock: *mut bindings::socket = core::ptr::null_mut();
        // SAFETY: `ns` is a live namespace (we hold a reference); `sock` receives the result.
        let r = unsafe {
            bindings::sock_create_kern(
                ns.net.as_ptr(),
                bindings::AF_INET as i32,
                bindings::sock_type_SOCK_STREAM as i32,
                bindings::DMCORE_IPPROTO_TCP,
                &mut sock,
            )
        };
        kernel::error::to_result(r)?;
        let sock = NonNull::new(sock).ok_or(ENOMEM)?;
        // SAFETY: `sock` is a new, live kernel socket.
        unsafe { bindings::dmcore_sock_tune(sock.as_ptr(), ffi::c_long::MAX, ffi::c_long::MAX) };
        // INVARIANT: created in `ns`, tuned; the namespace reference is kept with it.
        Ok(Self { sock, _net: ns.clone_ref() })
    }

    /// Connects to `addr`, giving up after `timeout_ms` with `ETIMEDOUT` (0: the TCP default,
    /// minutes of SYN retries).
    pub fn connect(ns: &NetNs, addr: SocketAddrV4, timeout_ms: u32) -> Result<Self> {
        let s = Self::create(ns)?;
        s.set_timeouts(timeout_ms, timeout_ms);
        let mut sa = to_sockaddr(addr);
        // SAFETY: `sa` is a valid `sockaddr_in` for the duration of the call.
        let r = unsafe {
            bindings::kernel_connect(
                s.sock.as_ptr(),
                (&mut sa as *mut bindings::sockaddr_in).cast(),
                core::mem::size_of::<bindings::sockaddr_in>() as i32,
                0,
            )
        };
        // A blocking connect whose send timeout expires returns -EINPROGRESS with the attempt
        // still pending (`__inet_stream_connect`): that is our timeout. Dropping `s` aborts it.
        if r == -(bindings::EINPROGRESS as i32) || r == -(bindings::EALREADY as i32) {
            return Err(etimedout());
        }
        if r < 0 {
            return Err(sock_err(r));
        }
        s.set_timeouts(0, 0);
        Ok(s)
    }

    /// Listens on `addr` (`SO_REUSEADDR` set); port 0 picks a free port (see `local_addr`).
    pub fn listen(ns: &NetNs, addr: SocketAddrV4, backlog: u32) -> Result<Self> {
        let s = Self::create(ns)?;
        let mut sa = to_sockaddr(addr);
        // SAFETY: live socket; `sa` is valid for the calls.
        unsafe {
            bindings::sock_set_reuseaddr((*s.sock.as_ptr()).sk);
            let r = bindings::kernel_bind(
                s.sock.as_ptr(),
                (&mut sa as *mut bindings::sockaddr_in).cast(),
                core::mem::size_of::<bindings::sockaddr_in>() as i32,
            );
            kernel::error::to_result(r)?;
            kernel::error::to_result(bindings::kernel_listen(s.sock.as_ptr(), backlog as i32))?;
        }
        Ok(s)
    }

    /// Accepts one connection, waiting up to `timeout_ms` (0: forever; [`Socket::shutdown`]
    /// from another thread ends the wait with an error).
    pub fn accept(&self, timeout_ms: u32) -> Result<Socket> {
        self.set_timeouts(0, timeout_ms);
        let mut new: *mut bindings::socket = core::ptr::null_mut();
        // SAFETY: live listening socket; `new` receives the accepted socket.
        let r = unsafe { bindings::kernel_accept(self.sock.as_ptr(), &mut new, 0) };
        if r < 0 {
            return Err(sock_err(r));
        }
        let new = NonNull::new(new).ok_or(ENOMEM)?;
        // SAFETY: `new` is a live accepted socket.
        unsafe { bindings::dmcore_sock_tune(new.as_ptr(), ffi::c_long::MAX, ffi::c_long::MAX) };
        // INVARIANT: accepted from a socket in our namespace; tuned.
        Ok(Socket { sock: new, _net: self._net.clone_ref() })
    }

    /// Sets send and receive timeouts (0: none). A timed-out operation fails with `ETIMEDOUT`.
    pub fn set_timeouts(&self, send_ms: u32, recv_ms: u32) {
        // SAFETY: live socket (type invariant); the shim takes the socket lock.
        unsafe {
            bindings::dmcore_sock_tune(self.sock.as_ptr(), jiffies_or_forever(send_ms), jiffies_or_forever(recv_ms))
        };
    }

    /// The send buffer's state: `(free, queued)` in bytes of buffer memory (which counts
    /// per-packet overhead, so a frame of `n` bytes takes somewhat more than `n`). A send that
    /// needs more than `free` blocks until the peer acknowledges data, up to the send timeout;
    /// callers that must not block (a peer that stopped reading) check this first.
    pub fn send_space(&self) -> (i64, u64) {
        let mut queued: ffi::c_int = 0;
        // SAFETY: live socket (type invariant); the shim only reads two fields.
        let free = unsafe { bindings::dmcore_sock_send_space(self.sock.as_ptr(), &mut queued) };
        (i64::from(free), queued.max(0) as u64)
    }

    /// Prepares the socket for a sender that checks [`Socket::send_space`] before it sends:
    /// raises the send buffer to at least `bytes` (TCP autotuning stays on; only TCP memory
    /// pressure shrinks it again), and turns `TCP_NOTSENT_LOWAT` off, under which a send
    /// would also wait while unsent data exceeds the `net.ipv4.tcp_notsent_lowat` sysctl,
    /// whatever the free space.
    pub fn prepare_checked_sends(&self, bytes: u32) {
        let bytes = bytes.min(i32::MAX as u32) as ffi::c_int;
        // SAFETY: live socket (type invariant); the shim takes the socket lock.
        unsafe { bindings::dmcore_sock_send_setup(self.sock.as_ptr(), bytes) };
    }

    /// Sends all of `buf`.
    pub fn send_all(&self, buf: &[u8]) -> Result {
        let _noio = NoIoScope::enter();
        let mut off = 0;
        while off < buf.len() {
            let rest = &buf[off..];
            let mut iov = bindings::kvec { iov_base: rest.as_ptr() as *mut ffi::c_void, iov_len: rest.len() };
            let mut msg = bindings::msghdr { msg_flags: bindings::MSG_NOSIGNAL as u32, ..Default::default() };
            // SAFETY: live socket; `iov` describes `rest`, which outlives the call and is only
            // read.
            let r = unsafe { bindings::kernel_sendmsg(self.sock.as_ptr(), &mut msg, &mut iov, 1, rest.len()) };
            if r < 0 {
                return Err(sock_err(r));
            }
            if r == 0 {
                return Err(EPIPE);
            }
            off += r as usize;
        }
        Ok(())
    }

    /// Receives exactly `buf.len()` bytes. The peer closing first is `ECONNRESET`.
    pub fn recv_exact(&self, buf: &mut [u8]) -> Result {
        self.recv_exact_by(buf, None)
    }

    /// As [`Socket::recv_exact`], but all of it by `deadline_ms` (monotonic milliseconds,
    /// `ktime_get`): the timeouts are set to the time left before each receive, so a peer that
    /// trickles bytes cannot stretch a bounded wait. Leaves both timeouts changed (callers set
    /// them again with [`Socket::set_timeouts`]).
    pub fn recv_exact_by(&self, buf: &mut [u8], deadline_ms: Option<i64>) -> Result {
        let _noio = NoIoScope::enter();
        let mut off = 0;
        while off < buf.len() {
            if let Some(d) = deadline_ms {
                let left = d - kernel::time::Ktime::ktime_get().to_ms();
                if left <= 0 {
                    return Err(etimedout());
                }
                self.set_timeouts(left.min(i64::from(u32::MAX)) as u32, left.min(i64::from(u32::MAX)) as u32);
            }
            let rest = &mut buf[off..];
            let mut iov = bindings::kvec { iov_base: rest.as_mut_ptr().cast(), iov_len: rest.len() };
            let mut msg = bindings::msghdr::default();
            let flags = (bindings::MSG_WAITALL | bindings::MSG_NOSIGNAL) as i32;
            // SAFETY: live socket; `iov` describes `rest`, exclusively borrowed for the call.
            let r = unsafe { bindings::kernel_recvmsg(self.sock.as_ptr(), &mut msg, &mut iov, 1, rest.len(), flags) };
            if r < 0 {
                return Err(sock_err(r));
            }
            if r == 0 {
                return Err(econnreset());
            }
            off += r as usize;
        }
        Ok(())
    }

    /// Shuts both directions down: blocked sends, receives and accepts in other threads return
    /// with an error. The socket stays allocated until dropped.
    pub fn shutdown(&self) {
        // SAFETY: live socket; shutting down twice is harmless.
        unsafe { bindings::kernel_sock_shutdown(self.sock.as_ptr(), bindings::sock_shutdown_cmd_SHUT_RDWR) };
    }

    /// The local address (useful after listening on port 0).
    pub fn local_addr(&self) -> Result<SocketAddrV4> {
        self.address(bindings::kernel_getsockname)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Result<SocketAddrV4> {
        self.address(bindings::kernel_getpeername)
    }

    fn address(
        &self,
        get: unsafe extern "C" fn(*mut bindings::socket, *mut bindings::sockaddr) -> ffi::c_int,
    ) -> Result<SocketAddrV4> {
        let mut sa = bindings::sockaddr_in::default();
        // SAFETY: live socket; `sa` is large enough for the IPv4 address `get` writes.
        let r = unsafe { get(self.sock.as_ptr(), (&mut sa as *mut bindings::sockaddr_in).cast()) };
        if r < 0 {
            return Err(Error::from_errno(r));
        }
        Ok(from_sockaddr(&sa))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: live socket released exactly once; the namespace reference (`_net`) is
        // dropped after this, so the namespace outlives the socket.
        unsafe {
            bindings::kernel_sock_shutdown(self.sock.as_ptr(), bindings::sock_shutdown_cmd_SHUT_RDWR);
            bindings::sock_release(self.sock.as_ptr());
        }
    }
}
