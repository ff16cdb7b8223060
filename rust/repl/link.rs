// SPDX-License-Identifier: GPL-2.0

//! Frames on a socket, and the connection handshake, for both roles (the codec and its checks
//! are `rust/core/src/wire.rs`).

use crate::dmcore::crc::KernelCrc32c;
use crate::dmcore::hmac::KernelHmac;
use crate::dmcore::keys::random_bytes;
use crate::dmcore::net::Socket;
use crate::wbrepl_core::wire::{self, FrameType, Header, Hello, Hmac, RxSeq, Transcript, WireError, HELLO_FRAME_LEN, HEADER_LEN, MAC_LEN, NONCE_LEN};
use core::fmt;
use kernel::error::Error;

/// Why a connection ended or could not be made.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LinkError {
    /// A socket error (or timeout).
    Io(Error),
    /// The peer sent something the protocol refuses.
    Wire(WireError),
    /// A frame that is valid but not expected here.
    Unexpected(FrameType),
    /// Applying a frame to the local device failed.
    Apply(Error),
    /// The target is being removed.
    Stopped,
    /// The peer closed the connection in order (`CLOSE`).
    Closed,

}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket error {}", e.to_errno()),
            Self::Wire(w) => f.write_str(w.as_str()),
            Self::Unexpected(t) => write!(f, "unexpected frame type {}", *t as u8),
            Self::Apply(e) => write!(f, "local write failed ({})", e.to_errno()),
            Self::Stopped => f.write_str("target removed"),
            Self::Closed => f.write_str("closed by the peer"),

        }
    }
}

impl From<Error> for LinkError {
    fn from(e: Error) -> Self {
        Self::Io(e)
    }
}

impl From<WireError> for LinkError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

fn as_mac(m: Option<&KernelHmac>) -> Option<&dyn Hmac> {
    m.map(|m| m as &dyn Hmac)
}

/// Seals and sends one frame whose payload is `payload`.
pub(crate) fn send_frame(
    sock: &Socket,
    ty: FrameType,
    flags: u16,
    seq: u64,
    payload: &[u8],
    mac: Option<&KernelHmac>,
) -> Result<(), LinkError> {
    let mut hdr = [0u8; HEADER_LEN];
    wire::seal(&mut hdr, ty, flags, seq, payload, &KernelCrc32c, as_mac(mac))?;
    sock.send_all(&hdr)?;
    if !payload.is_empty() {
        sock.send_all(payload)?;
    }
    Ok(())
}

/// Receives one frame into `buf` and checks it (header first, then CRC, MAC and sequence).
/// A payload longer than `buf` is refused before it is read.
pub(crate) fn recv_frame<'b>(
    sock: &Socket,
    rx: &mut RxSeq,
    mac: Option<&KernelHmac>,
    buf: &'b mut [u8],
) -> Result<(Header, &'b [u8]), LinkError> {
    recv_frame_by(sock, rx, mac, buf, None)
}

/// As [`recv_frame`], all of it by `deadline_ms` (see [`Socket::recv_exact_by`]).
fn recv_frame_by<'b>(
    sock: &Socket,
    rx: &mut RxSeq,
    mac: Option<&KernelHmac>,
    buf: &'b mut [u8],
    deadline_ms: Option<i64>,
) -> Result<(Header, &'b [u8]), LinkError> {
    let (hdr, h) = recv_header_by(sock, deadline_ms)?;
    recv_payload_by(sock, &hdr, h, rx, mac, buf, deadline_ms)
}

/// A received frame header, raw (for [`recv_payload_by`]) and decoded (bounds checked: the type
/// is known and the length allowed for it).
pub(crate) type RawHeader = [u8; HEADER_LEN];

/// Receives one frame header (all of it by `deadline_ms`, see [`Socket::recv_exact_by`]), so
/// that the caller can choose where its payload goes.
pub(crate) fn recv_header_by(sock: &Socket, deadline_ms: Option<i64>) -> Result<(RawHeader, Header), LinkError> {
    let mut hdr = [0u8; HEADER_LEN];
    sock.recv_exact_by(&mut hdr, deadline_ms)?;
    let h = Header::decode(&hdr)?;
    Ok((hdr, h))
}

/// Receives the payload of the frame whose header [`recv_header_by`] returned into `buf` (by
/// `deadline_ms`), and checks the frame (CRC, MAC, sequence). A payload longer than `buf` is
/// refused unread.
pub(crate) fn recv_payload_by<'b>(
    sock: &Socket,
    hdr: &RawHeader,
    h: Header,
    rx: &mut RxSeq,
    mac: Option<&KernelHmac>,
    buf: &'b mut [u8],
    deadline_ms: Option<i64>,
) -> Result<(Header, &'b [u8]), LinkError> {
    let payload = buf.get_mut(..h.len as usize).ok_or(LinkError::Wire(WireError::BadLength))?;
    sock.recv_exact_by(payload, deadline_ms)?;
    let h = wire::open(hdr, payload, rx, &KernelCrc32c, as_mac(mac))?;
    Ok((h, payload))
}

/// An established, authenticated connection's framing state.
pub(crate) struct Session {
    /// MAC key for the frames we send (with `auth`; one key per direction).
    pub(crate) tx_mac: Option<KernelHmac>,
    /// MAC key for the frames we receive.
    pub(crate) rx_mac: Option<KernelHmac>,
    /// Sequence number of our next frame.
    pub(crate) tx_seq: u64,
    /// The peer's next sequence number.
    pub(crate) rx: RxSeq,
    /// The peer (a secondary) said its device is inconsistent (`HELLO_INCONSISTENT`).
    pub(crate) peer_inconsistent: bool,
}

/// Runs the handshake (`docs/repl.md`, "Handshake") on a fresh socket: `HELLO` both ways, then
/// with `key` the `AUTH` proofs over both `HELLO` frames as they crossed the wire, deriving one
/// session key per direction. All of it within `limit_ms`, however the peer paces its bytes.
/// `inconsistent` (a secondary only) sets `HELLO_INCONSISTENT`.
pub(crate) fn handshake(
    sock: &Socket,
    role: wire::Role,
    sectors: u64,
    key: Option<&KernelHmac>,
    inconsistent: bool,
    limit_ms: u32,
) -> Result<Session, LinkError> {
    let deadline = Some(kernel::time::Ktime::ktime_get().to_ms() + i64::from(limit_ms));
    let mut own = Hello { role, sectors, nonce: [0u8; NONCE_LEN] };
    random_bytes(&mut own.nonce);
    let flags = if key.is_some() { wire::HELLO_AUTH } else { 0 }
        | if inconsistent && role == wire::Role::Secondary { wire::HELLO_INCONSISTENT } else { 0 };
    let mut rx = RxSeq::new();
    // Both HELLO frames, byte for byte: the transcript the proofs and keys cover.
    let mut own_frame = [0u8; HELLO_FRAME_LEN];
    let mut peer_frame = [0u8; HELLO_FRAME_LEN];
    {
        let (hdr, payload) = own_frame.split_at_mut(HEADER_LEN);
        let mut enc = [0u8; Hello::LEN];
        payload.copy_from_slice(own.encode(&mut enc));
        let hdr: &mut [u8; HEADER_LEN] = hdr.try_into().map_err(|_| LinkError::Wire(WireError::BadLength))?;
        wire::seal(hdr, FrameType::Hello, flags, 0, payload, &KernelCrc32c, None)?;
    }
    let send_hello = |f: &[u8; HELLO_FRAME_LEN]| -> Result<(), LinkError> { Ok(sock.send_all(f)?) };
    let recv_hello = |rx: &mut RxSeq, f: &mut [u8; HELLO_FRAME_LEN]| -> Result<(Hello, u16), LinkError> {
        let (raw, h) = recv_header_by(sock, deadline)?;
        if h.ty != FrameType::Hello {
            return Err(LinkError::Unexpected(h.ty));
        }
        let (hdr, payload) = f.split_at_mut(HEADER_LEN);
        hdr.copy_from_slice(&raw);
        let (h, p) = recv_payload_by(sock, &raw, h, rx, None, payload, deadline)?;
        Ok((Hello::decode(p)?, h.flags))
    };
    // The primary speaks first.
    let (peer, peer_flags) = if role == wire::Role::Primary {
        send_hello(&own_frame)?;
        recv_hello(&mut rx, &mut peer_frame)?
    } else {
        let p = recv_hello(&mut rx, &mut peer_frame)?;
        send_hello(&own_frame)?;
        p
    };
    let peer_auth = peer_flags & wire::HELLO_AUTH != 0;
    let peer_inconsistent = peer_flags & wire::HELLO_INCONSISTENT != 0;
    if peer_inconsistent && peer.role != wire::Role::Secondary {
        return Err(LinkError::Wire(WireError::BadFlags));
    }
    wire::check_hello(&own, key.is_some(), &peer, peer_auth)?;
    let Some(key) = key else {
        return Ok(Session { tx_mac: None, rx_mac: None, tx_seq: 1, rx, peer_inconsistent });
    };
    let t = if role == wire::Role::Primary {
        Transcript { primary_hello: &own_frame, secondary_hello: &peer_frame }
    } else {
        Transcript { primary_hello: &peer_frame, secondary_hello: &own_frame }
    };
    let proof = wire::auth_proof(key, role, &t)?;
    let mut pbuf = [0u8; MAC_LEN];
    let recv_proof = |rx: &mut RxSeq, pbuf: &mut [u8; MAC_LEN]| -> Result<(), LinkError> {
        let (h, p) = recv_frame_by(sock, rx, None, pbuf, deadline)?;
        if h.ty != FrameType::Auth {
            return Err(LinkError::Unexpected(h.ty));
        }
        wire::check_proof(key, peer.role, &t, p)?;
        Ok(())
    };
    if role == wire::Role::Primary {
        send_frame(sock, FrameType::Auth, 0, 1, &proof, None)?;
        recv_proof(&mut rx, &mut pbuf)?;
    } else {
        recv_proof(&mut rx, &mut pbuf)?;
        send_frame(sock, FrameType::Auth, 0, 1, &proof, None)?;
    }
    let keys = wire::session_keys(key, &t)?;
    let (tx, rxk) = keys.for_role(role);
    Ok(Session { tx_mac: Some(KernelHmac::new(tx)?), rx_mac: Some(KernelHmac::new(rxk)?), tx_seq: 2, rx, peer_inconsistent })
}
