// SPDX-License-Identifier: GPL-2.0
//! The dm-repl wire protocol: frame header, payloads, integrity (CRC-32C on every frame, an
//! HMAC-SHA256 MAC and a sequence number once authenticated) and the connection handshake.
//!
//! Everything here works on caller buffers and never allocates. Every length is checked
//! against its bound before anything is read or allocated with it: a receiver decodes the
//! fixed-size header first ([`Header::decode`]), which refuses an unknown type, a length the
//! type does not allow or a length above [`MAX_PAYLOAD`]; only then does it read `len` payload
//! bytes and call [`open`].
//!
//! Layout (all integers little-endian), documented as tables in `docs/repl.md`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `WBRP` |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | frame type |
//! | 6 | 2 | flags (per type; unknown bits are refused) |
//! | 8 | 8 | sequence number (per direction: 0 for `HELLO`, then +1 per frame) |
//! | 16 | 4 | payload length |
//! | 20 | 4 | CRC-32C of the header (CRC and MAC fields zero) and the payload |
//! | 24 | 32 | HMAC-SHA256 under the session key of the same bytes, or zero without authentication |

use crate::wbformat::{le32, le64, Crc32c};

/// `WBRP`.
pub const MAGIC: [u8; 4] = *b"WBRP";
/// Protocol version.
pub const VERSION: u8 = 2;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 56;
/// Bytes of a MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Data bytes one write frame carries at most.
pub const MAX_DATA: u32 = 1 << 20;
/// Bytes of a write frame's fixed part (before its data).
pub const WRITE_FIXED: u32 = 24;
/// Largest payload of any frame.
pub const MAX_PAYLOAD: u32 = WRITE_FIXED + MAX_DATA;
/// Bytes of a marker label.
pub const LABEL_LEN: usize = 64;

/// Why a frame or a handshake step was refused. Each has its own text for the kernel log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The header does not start with `WBRP`.
    BadMagic,
    /// A version this code does not speak.
    BadVersion,
    /// An unknown frame type.
    BadType,
    /// Flag bits the frame type does not define.
    BadFlags,
    /// A payload length the frame type does not allow (or above `MAX_PAYLOAD`).
    BadLength,
    /// The buffer is shorter than the frame claims.
    Truncated,
    /// The CRC-32C does not match.
    BadCrc,
    /// The MAC does not match.
    BadMac,
    /// The sequence number is not the next one (a replayed, dropped or reordered frame).
    BadSeq,
    /// A payload field out of range (data not a whole number of sectors, a sector range
    /// beyond the device, a label that is not text).
    BadField,
    /// A frame not allowed at this point of the conversation.
    Unexpected,
    /// The peer has the same role, or the roles are not primary and secondary.
    BadRole,
    /// One side requires authentication and the other does not.
    AuthMismatch,
    /// The peer's authentication proof is wrong (wrong key, or a reflected proof).
    AuthFailed,
    /// The secondary's device is smaller than the primary's.
    TooSmall,
    /// The MAC could not be computed (crypto failure).
    MacFailed,
}

impl WireError {
    /// A short text for the kernel log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMagic => "bad magic",
            Self::BadVersion => "unsupported protocol version (this node speaks protocol 2: run the same wbrepl release on both nodes)",
            Self::BadType => "unknown frame type",
            Self::BadFlags => "unknown flags",
            Self::BadLength => "payload length not allowed for the frame type",
            Self::Truncated => "frame truncated",
            Self::BadCrc => "CRC-32C mismatch",
            Self::BadMac => "MAC mismatch",
            Self::BadSeq => "unexpected sequence number (replayed or lost frame)",
            Self::BadField => "payload field out of range",
            Self::Unexpected => "frame not allowed at this point",
            Self::BadRole => "peer role is not the complement of ours",
            Self::AuthMismatch => "authentication required by one side only",
            Self::AuthFailed => "authentication failed",
            Self::TooSmall => "secondary device smaller than the primary's",
            Self::MacFailed => "MAC computation failed",
        }
    }
}

/// Frame types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Handshake: role, device size, nonce.
    Hello = 1,
    /// Handshake: authentication proof.
    Auth = 2,
    /// A write, in order.
    Write = 3,
    /// End of an epoch: apply everything before it before anything after it.
    Barrier = 4,
    /// Secondary to primary: frames applied (and epochs durable).
    Ack = 5,
    /// A marker injected by the primary (`marker <label>` message).
    Marker = 6,
    /// Keepalive.
    Ping = 7,
    /// Keepalive answer.
    Pong = 8,
    /// A resync write: out of order, while the secondary is inconsistent.
    ResyncWrite = 9,
    /// Orderly close, with a reason.
    Close = 10,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Auth,
            3 => Self::Write,
            4 => Self::Barrier,
            5 => Self::Ack,
            6 => Self::Marker,
            7 => Self::Ping,
            8 => Self::Pong,
            9 => Self::ResyncWrite,
            10 => Self::Close,
            _ => return None,
        })
    }

    /// Flag bits this type defines.
    fn flag_mask(self) -> u16 {
        match self {
            Self::Hello => HELLO_AUTH | HELLO_INCONSISTENT,
            Self::Write | Self::ResyncWrite => WRITE_FUA,
            Self::Barrier => BARRIER_FLUSH | BARRIER_RESYNC_DONE,
            Self::Ack => ACK_MARKER_IGNORED,
            _ => 0,
        }
    }

    /// Allowed payload lengths: `(min, max)`.
    fn len_range(self) -> (u32, u32) {
        match self {
            Self::Hello => (HELLO_LEN, HELLO_LEN),
            Self::Auth => (MAC_LEN as u32, MAC_LEN as u32),
            Self::Write | Self::ResyncWrite => (WRITE_FIXED + 512, MAX_PAYLOAD),
            Self::Barrier => (8, 8),
            Self::Ack => (16, 16),
            Self::Marker => (MARKER_LEN, MARKER_LEN),
            Self::Ping | Self::Pong => (8, 8),
            Self::Close => (4, 4),
        }
    }
}

/// `HELLO` flag: this side requires authentication.
pub const HELLO_AUTH: u16 = 1;
/// `HELLO` flag, from a secondary only: its device is not a consistent image (a resync was
/// interrupted); the primary must resync and end with the resync-done barrier.
pub const HELLO_INCONSISTENT: u16 = 2;
/// `WRITE` flag: the write was FUA (durable at the secondary before it is acknowledged).
pub const WRITE_FUA: u16 = 1;
/// `BARRIER` flag: the secondary flushes its device before acknowledging the barrier
/// (a PREFLUSH or FUA from above).
pub const BARRIER_FLUSH: u16 = 1;
/// `BARRIER` flag: the resync is complete; with every frame before it applied, the secondary
/// is consistent again.
pub const BARRIER_RESYNC_DONE: u16 = 2;
/// `ACK` flag (protocol 2): the frame acknowledged, `seq`, is a marker the secondary did *not*
/// record (its device was not a consistent image: a resync was under way). Everything up to
/// `seq` is applied as usual, but that marker does not count as acknowledged: no image of it
/// can be taken. An `ACK` with this flag acknowledges nothing after the marker.
pub const ACK_MARKER_IGNORED: u16 = 1;

const HELLO_LEN: u32 = 16 + NONCE_LEN as u32;
const MARKER_LEN: u32 = 16 + LABEL_LEN as u32;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// Flags (only bits the type defines).
    pub flags: u16,
    /// Sequence number.
    pub seq: u64,
    /// Payload bytes that follow.
    pub len: u32,
}

fn put(out: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = out.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

impl Header {
    /// Decodes and validates a header (everything but CRC, MAC and sequence, which [`open`]
    /// checks once the payload is read). After this, `len` is safe to read and allocate.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        if b.get(0..4) != Some(&MAGIC[..]) {
            return Err(WireError::BadMagic);
        }
        if b[4] != VERSION {
            return Err(WireError::BadVersion);
        }
        let ty = FrameType::from_u8(b[5]).ok_or(WireError::BadType)?;
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & !ty.flag_mask() != 0 {
            return Err(WireError::BadFlags);
        }
        let len = le32(b, 16);
        let (min, max) = ty.len_range();
        if len < min || len > max {
            return Err(WireError::BadLength);
        }
        if matches!(ty, FrameType::Write | FrameType::ResyncWrite) && (len - WRITE_FIXED) % 512 != 0 {
            return Err(WireError::BadLength);
        }
        Ok(Self { ty, flags, seq: le64(b, 8), len })
    }

    /// Writes the header with zero CRC and MAC (see [`seal`]).
    fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out.fill(0);
        put(out, 0, &MAGIC);
        out[4] = VERSION;
        out[5] = self.ty as u8;
        put(out, 6, &self.flags.to_le_bytes());
        put(out, 8, &self.seq.to_le_bytes());
        put(out, 16, &self.len.to_le_bytes());
    }
}

/// HMAC-SHA256 under a key the implementation holds (the kernel crypto API's `hmac(sha256)` in
/// the module, the `hmac`/`sha2` crates on the host).
pub trait Hmac {
    /// The MAC of the concatenation of `parts` (at most 8), or `None` if the implementation
    /// failed (then nothing is sent, and nothing received is accepted).
    fn mac(&self, parts: &[&[u8]]) -> Option<[u8; MAC_LEN]>;
}

/// Compares two MACs in constant time.
pub fn mac_eq(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Builds a frame header in `out` for `payload`: the CRC always, the MAC with `mac` (after
/// authentication). `payload.len()` must be allowed for the type (checked: `BadLength`).
pub fn seal(
    out: &mut [u8; HEADER_LEN],
    ty: FrameType,
    flags: u16,
    seq: u64,
    payload: &[u8],
    crc: &impl Crc32c,
    mac: Option<&dyn Hmac>,
) -> Result<(), WireError> {
    let len = u32::try_from(payload.len()).map_err(|_| WireError::BadLength)?;
    let h = Header { ty, flags, seq, len };
    h.encode(out);
    // Refuse what a receiver would refuse.
    Header::decode(out)?;
    let c = crc.append(crc.append(0, &out[..]), payload);
    if let Some(m) = mac {
        let tag = m.mac(&[&out[..], payload]).ok_or(WireError::MacFailed)?;
        put(out, 24, &tag);
    }
    put(out, 20, &c.to_le_bytes());
    Ok(())
}

/// Receive-side state of one direction: the next expected sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxSeq {
    next: u64,
}

impl RxSeq {
    /// A new connection: `HELLO` (sequence 0) comes first.
    pub fn new() -> Self {
        Self { next: 0 }
    }

    /// The sequence number expected next.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// Checks a received frame: header (again), CRC, the MAC when `mac` is given (after
/// authentication; without it the MAC field must be zero), and that its sequence number is the
/// next one, which it then consumes. `payload` must be exactly the `len` bytes read after the
/// header.
pub fn open(
    hdr: &[u8; HEADER_LEN],
    payload: &[u8],
    rx: &mut RxSeq,
    crc: &impl Crc32c,
    mac: Option<&dyn Hmac>,
) -> Result<Header, WireError> {
    let h = Header::decode(hdr)?;
    if payload.len() != h.len as usize {
        return Err(WireError::Truncated);
    }
    let mut zeroed = *hdr;
    zeroed[20..HEADER_LEN].fill(0);
    let c = crc.append(crc.append(0, &zeroed[..]), payload);
    if c != le32(hdr, 20) {
        return Err(WireError::BadCrc);
    }
    let mut got = [0u8; MAC_LEN];
    got.copy_from_slice(&hdr[24..HEADER_LEN]);
    let want = match mac {
        Some(m) => m.mac(&[&zeroed[..], payload]).ok_or(WireError::MacFailed)?,
        None => [0u8; MAC_LEN],
    };
    if !mac_eq(&got, &want) {
        return Err(WireError::BadMac);
    }
    if h.seq != rx.next {
        return Err(WireError::BadSeq);
    }
    rx.next = rx.next.wrapping_add(1);
    Ok(h)
}

// --- payloads

/// Peer roles in `HELLO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends writes.
    Primary,
    /// Applies them.
    Secondary,
}

/// `HELLO` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Sender's role.
    pub role: Role,
    /// Sender's device size, in sectors.
    pub sectors: u64,
    /// Fresh random bytes (the kernel's `get_random_bytes`).
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    /// Payload bytes.
    pub const LEN: usize = HELLO_LEN as usize;

    /// Encodes into `out`; returns the payload.
    pub fn encode<'a>(&self, out: &'a mut [u8; Self::LEN]) -> &'a [u8] {
        let o = out;
        o.fill(0);
        o[0] = match self.role {
            Role::Primary => 1,
            Role::Secondary => 2,
        };
        put(o, 8, &self.sectors.to_le_bytes());
        put(o, 16, &self.nonce);
        o
    }

    /// Decodes a `HELLO` payload.
    pub fn decode(p: &[u8]) -> Result<Self, WireError> {
        let p: &[u8; Self::LEN] = p.try_into().map_err(|_| WireError::BadLength)?;
        let role = match p[0] {
            1 => Role::Primary,
            2 => Role::Secondary,
            _ => return Err(WireError::BadField),
        };
        if p[1..8].iter().any(|&b| b != 0) {
            return Err(WireError::BadField);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&p[16..]);
        Ok(Self { role, sectors: le64(p, 8), nonce })
    }
}

/// `WRITE` / `RESYNC_WRITE` payload (the data follows the fixed part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write<'a> {
    /// First sector written.
    pub sector: u64,
    /// Epoch the write belongs to.
    pub epoch: u64,
    /// The data (a whole number of sectors, at most [`MAX_DATA`]).
    pub data: &'a [u8],
}

impl<'a> Write<'a> {
    /// Encodes the fixed part into `out`; the data is sent after it.
    pub fn encode_fixed(&self, out: &mut [u8; WRITE_FIXED as usize]) {
        out.fill(0);
        put(out, 0, &self.sector.to_le_bytes());
        put(out, 8, &self.epoch.to_le_bytes());
    }

    /// Decodes a write payload and checks that it lies within a device of `sectors` sectors.
    pub fn decode(p: &'a [u8], sectors: u64) -> Result<Self, WireError> {
        if p.len() < WRITE_FIXED as usize + 512 || p.len() > MAX_PAYLOAD as usize {
            return Err(WireError::BadLength);
        }
        let (fixed, data) = p.split_first_chunk::<{ WRITE_FIXED as usize }>().ok_or(WireError::BadLength)?;
        if data.len() % 512 != 0 || fixed.iter().skip(16).any(|&b| b != 0) {
            return Err(WireError::BadField);
        }
        let sector = le64(fixed, 0);
        let end = sector.checked_add(data.len() as u64 / 512).ok_or(WireError::BadField)?;
        if end > sectors {
            return Err(WireError::BadField);
        }
        Ok(Self { sector, epoch: le64(fixed, 8), data })
    }
}

/// `ACK` payload: every frame up to `seq` is applied; every epoch up to `durable_epoch` is on
/// stable storage at the secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Highest sequence number applied (cumulative).
    pub seq: u64,
    /// Highest epoch durable.
    pub durable_epoch: u64,
}

impl Ack {
    /// Payload bytes.
    pub const LEN: usize = 16;

    /// Encodes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut o = [0u8; Self::LEN];
        put(&mut o, 0, &self.seq.to_le_bytes());
        put(&mut o, 8, &self.durable_epoch.to_le_bytes());
        o
    }

    /// Decodes.
    pub fn decode(p: &[u8]) -> Result<Self, WireError> {
        if p.len() != Self::LEN {
            return Err(WireError::BadLength);
        }
        Ok(Self { seq: le64(p, 0), durable_epoch: le64(p, 8) })
    }
}

/// `MARKER` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// Marker id (chosen by the primary, increasing).
    pub id: u64,
    /// Wall-clock time at the primary, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Label: printable ASCII, NUL-padded.
    pub label: [u8; LABEL_LEN],
}

impl Marker {
    /// Payload bytes.
    pub const LEN: usize = MARKER_LEN as usize;

    /// Encodes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut o = [0u8; Self::LEN];
        put(&mut o, 0, &self.id.to_le_bytes());
        put(&mut o, 8, &self.time_ns.to_le_bytes());
        put(&mut o, 16, &self.label);
        o
    }

    /// Decodes; the label must be printable ASCII followed only by NULs.
    pub fn decode(p: &[u8]) -> Result<Self, WireError> {
        let p: &[u8; Self::LEN] = p.try_into().map_err(|_| WireError::BadLength)?;
        let mut label = [0u8; LABEL_LEN];
        label.copy_from_slice(&p[16..]);
        if !crate::marker::label_ok(&label) {
            return Err(WireError::BadField);
        }
        Ok(Self { id: le64(p, 0), time_ns: le64(p, 8), label })
    }
}

// --- handshake

const PROOF_PRIMARY: &[u8] = b"wbrepl-v2 auth primary";
const PROOF_SECONDARY: &[u8] = b"wbrepl-v2 auth secondary";
const KEY_P2S: &[u8] = b"wbrepl-v2 key primary to secondary";
const KEY_S2P: &[u8] = b"wbrepl-v2 key secondary to primary";

/// Bytes of a `HELLO` frame on the wire: header and payload.
pub const HELLO_FRAME_LEN: usize = HEADER_LEN + HELLO_LEN as usize;

/// Checks the peer's `HELLO` against ours: complementary roles, the same authentication
/// requirement (`HELLO_AUTH` flags), and a secondary at least as large as the primary.
pub fn check_hello(own: &Hello, own_auth: bool, peer: &Hello, peer_auth: bool) -> Result<(), WireError> {
    if own.role == peer.role {
        return Err(WireError::BadRole);
    }
    if own_auth != peer_auth {
        return Err(WireError::AuthMismatch);
    }
    let (primary, secondary) = if own.role == Role::Primary { (own, peer) } else { (peer, own) };
    if secondary.sectors < primary.sectors {
        return Err(WireError::TooSmall);
    }
    Ok(())
}

/// What the handshake authenticates: both `HELLO` frames exactly as they crossed the wire
/// (header and payload), the primary's first. Every field of both (protocol version, role,
/// flags such as `HELLO_INCONSISTENT`, device size, nonce) is bound by the proofs and the
/// session keys, so a man in the middle who changes any byte of either makes the handshake
/// fail.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The primary's `HELLO` frame.
    pub primary_hello: &'a [u8],
    /// The secondary's `HELLO` frame.
    pub secondary_hello: &'a [u8],
}

/// The proof a side sends in `AUTH`: HMAC under the shared key of a role-specific label and
/// the transcript. (Role-specific, so a proof cannot be reflected back; over both fresh nonces,
/// so an old one cannot be replayed.)
pub fn auth_proof(key: &dyn Hmac, role: Role, t: &Transcript<'_>) -> Result<[u8; MAC_LEN], WireError> {
    let label = match role {
        Role::Primary => PROOF_PRIMARY,
        Role::Secondary => PROOF_SECONDARY,
    };
    key.mac(&[label, t.primary_hello, t.secondary_hello]).ok_or(WireError::MacFailed)
}

/// Checks the peer's `AUTH` payload against the transcript this side saw.
pub fn check_proof(key: &dyn Hmac, peer_role: Role, t: &Transcript<'_>, payload: &[u8]) -> Result<(), WireError> {
    let got: &[u8; MAC_LEN] = payload.try_into().map_err(|_| WireError::BadLength)?;
    if mac_eq(got, &auth_proof(key, peer_role, t)?) {
        Ok(())
    } else {
        Err(WireError::AuthFailed)
    }
}

/// The two session keys both sides derive after authentication, one per direction: every
/// later frame carries a MAC under the key of its direction, so a frame cannot be reflected
/// back to its sender, and frames of one connection are worthless in another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SessionKeys {
    /// For frames from the primary to the secondary.
    pub p2s: [u8; MAC_LEN],
    /// For frames from the secondary to the primary.
    pub s2p: [u8; MAC_LEN],
}

impl SessionKeys {
    /// `(send, receive)` keys for a side of `role`.
    pub fn for_role(&self, role: Role) -> (&[u8; MAC_LEN], &[u8; MAC_LEN]) {
        match role {
            Role::Primary => (&self.p2s, &self.s2p),
            Role::Secondary => (&self.s2p, &self.p2s),
        }
    }
}

/// Derives the session keys: HMAC under the shared key of a direction label and the transcript.
pub fn session_keys(key: &dyn Hmac, t: &Transcript<'_>) -> Result<SessionKeys, WireError> {
    let derive = |label: &[u8]| key.mac(&[label, t.primary_hello, t.secondary_hello]).ok_or(WireError::MacFailed);
    Ok(SessionKeys { p2s: derive(KEY_P2S)?, s2p: derive(KEY_S2P)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbformat::tests::RefCrc;
    use hmac::Mac as _;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    struct HostHmac(Vec<u8>);

    impl Hmac for HostHmac {
        fn mac(&self, parts: &[&[u8]]) -> Option<[u8; MAC_LEN]> {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).ok()?;
            for p in parts {
                m.update(p);
            }
            Some(m.finalize().into_bytes().into())
        }
    }

    fn frame(ty: FrameType, flags: u16, seq: u64, payload: &[u8], mac: Option<&dyn Hmac>) -> Vec<u8> {
        let mut h = [0u8; HEADER_LEN];
        seal(&mut h, ty, flags, seq, payload, &RefCrc, mac).unwrap();
        let mut v = h.to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// The receiver's path: header first, then exactly `len` payload bytes, then `open`.
    fn receive(bytes: &[u8], rx: &mut RxSeq, mac: Option<&dyn Hmac>) -> Result<Header, WireError> {
        let hdr: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN).ok_or(WireError::Truncated)?.try_into().unwrap();
        let h = Header::decode(hdr)?;
        let payload = bytes.get(HEADER_LEN..HEADER_LEN + h.len as usize).ok_or(WireError::Truncated)?;
        open(hdr, payload, rx, &RefCrc, mac)
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let k = HostHmac(b"Jefe".to_vec());
        let t = k.mac(&[b"what do ya want ", b"for nothing?"]).unwrap();
        assert_eq!(t[..4], [0x5b, 0xdc, 0xc1, 0x46]);
        assert_eq!(t[28..], [0x64, 0xec, 0x38, 0x43]);
    }

    #[test]
    fn write_frame_round_trips() {
        let data = vec![0xabu8; 4096];
        let mut fixed = [0u8; WRITE_FIXED as usize];
        Write { sector: 8, epoch: 3, data: &data }.encode_fixed(&mut fixed);
        let mut payload = fixed.to_vec();
        payload.extend_from_slice(&data);
        let key = HostHmac(vec![7; 32]);
        let f = frame(FrameType::Write, WRITE_FUA, 0, &payload, Some(&key));
        let mut rx = RxSeq::new();
        let h = receive(&f, &mut rx, Some(&key)).unwrap();
        assert_eq!(h, Header { ty: FrameType::Write, flags: WRITE_FUA, seq: 0, len: payload.len() as u32 });
        let w = Write::decode(&f[HEADER_LEN..], 100).unwrap();
        assert_eq!((w.sector, w.epoch, w.data.len()), (8, 3, 4096));
        assert_eq!(rx.next(), 1);
        // Beyond the device.
        assert_eq!(Write::decode(&f[HEADER_LEN..], 15), Err(WireError::BadField));
    }

    #[test]
    fn headers_with_bad_fields_are_refused_before_the_payload_is_read() {
        let f = frame(FrameType::Ping, 0, 0, &[0; 8], None);
        let hdr: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
        let with = |at: usize, v: &[u8]| {
            let mut h = hdr;
            h[at..at + v.len()].copy_from_slice(v);
            Header::decode(&h)
        };
        assert_eq!(with(0, b"XBRP"), Err(WireError::BadMagic));
        assert_eq!(with(4, &[1]), Err(WireError::BadVersion), "protocol 1 is refused");
        assert_eq!(with(4, &[3]), Err(WireError::BadVersion));
        assert_eq!(with(5, &[0]), Err(WireError::BadType));
        assert_eq!(with(5, &[11]), Err(WireError::BadType));
        assert_eq!(with(6, &[1, 0]), Err(WireError::BadFlags));
        assert_eq!(with(16, &9u32.to_le_bytes()), Err(WireError::BadLength));
        // A write claiming 4 GiB, or more than MAX_PAYLOAD, or not whole sectors.
        let mut w = with(5, &[FrameType::Write as u8]);
        assert_eq!(w, Err(WireError::BadLength));
        for len in [u32::MAX, MAX_PAYLOAD + 512, WRITE_FIXED + 100, WRITE_FIXED] {
            let mut h = hdr;
            h[5] = FrameType::Write as u8;
            h[16..20].copy_from_slice(&len.to_le_bytes());
            w = Header::decode(&h);
            assert_eq!(w, Err(WireError::BadLength), "{len}");
        }
    }

    #[test]
    fn replayed_lost_and_reordered_frames_are_refused() {
        let key = HostHmac(vec![1; 32]);
        let a = frame(FrameType::Ping, 0, 0, &[1; 8], Some(&key));
        let b = frame(FrameType::Ping, 0, 1, &[2; 8], Some(&key));
        let c = frame(FrameType::Ping, 0, 2, &[3; 8], Some(&key));
        let mut rx = RxSeq::new();
        assert!(receive(&a, &mut rx, Some(&key)).is_ok());
        assert_eq!(receive(&a, &mut rx, Some(&key)), Err(WireError::BadSeq), "replayed");
        assert_eq!(receive(&c, &mut rx, Some(&key)), Err(WireError::BadSeq), "b lost");
        assert!(receive(&b, &mut rx, Some(&key)).is_ok());
        assert!(receive(&c, &mut rx, Some(&key)).is_ok());
        // A frame MAC'd under another session's key.
        let other = HostHmac(vec![2; 32]);
        let d = frame(FrameType::Ping, 0, 3, &[4; 8], Some(&other));
        assert_eq!(receive(&d, &mut rx, Some(&key)), Err(WireError::BadMac));
        // An unauthenticated frame where a MAC is required.
        let e = frame(FrameType::Ping, 0, 3, &[4; 8], None);
        assert_eq!(receive(&e, &mut rx, Some(&key)), Err(WireError::BadMac));
    }

    struct FailingHmac;

    impl Hmac for FailingHmac {
        fn mac(&self, _parts: &[&[u8]]) -> Option<[u8; MAC_LEN]> {
            None
        }
    }

    #[test]
    fn a_failing_mac_sends_and_accepts_nothing() {
        let mut h = [0u8; HEADER_LEN];
        assert_eq!(seal(&mut h, FrameType::Ping, 0, 0, &[0; 8], &RefCrc, Some(&FailingHmac)), Err(WireError::MacFailed));
        let f = frame(FrameType::Ping, 0, 0, &[0; 8], None);
        assert_eq!(receive(&f, &mut RxSeq::new(), Some(&FailingHmac)), Err(WireError::MacFailed));
        let t = Transcript { primary_hello: &[1], secondary_hello: &[2] };
        assert_eq!(check_proof(&FailingHmac, Role::Primary, &t, &[0; MAC_LEN]), Err(WireError::MacFailed));
        assert_eq!(session_keys(&FailingHmac, &t), Err(WireError::MacFailed));
    }

    #[test]
    fn marker_labels_must_be_text() {
        let mut label = [0u8; LABEL_LEN];
        label[..5].copy_from_slice(b"daily");
        let m = Marker { id: 9, time_ns: 1, label };
        assert_eq!(Marker::decode(&m.encode()), Ok(m));
        let mut bad = m.encode();
        bad[16 + 2] = 0x07;
        assert_eq!(Marker::decode(&bad), Err(WireError::BadField));
        let mut gap = m.encode();
        gap[16 + 10] = b'x'; // text after the NUL padding
        assert_eq!(Marker::decode(&gap), Err(WireError::BadField));
    }

    fn hello(role: Role, sectors: u64, n: u8) -> Hello {
        Hello { role, sectors, nonce: [n; NONCE_LEN] }
    }

    /// A `HELLO` frame as it crosses the wire.
    fn hello_frame(h: &Hello, flags: u16) -> Vec<u8> {
        let mut buf = [0u8; Hello::LEN];
        let f = frame(FrameType::Hello, flags, 0, h.encode(&mut buf), None);
        assert_eq!(f.len(), HELLO_FRAME_LEN);
        f
    }

    #[test]
    fn handshake_with_the_right_key_succeeds_and_derives_one_key_per_direction() {
        let (kp, ks) = (HostHmac(b"secret".to_vec()), HostHmac(b"secret".to_vec()));
        let (p, s) = (hello(Role::Primary, 100, 1), hello(Role::Secondary, 100, 2));
        let mut buf = [0u8; Hello::LEN];
        let ph = Hello::decode(p.encode(&mut buf)).unwrap();
        assert_eq!(Hello::decode(&buf[..Hello::LEN - 1]), Err(WireError::BadLength));
        assert_eq!(ph, p);
        check_hello(&s, true, &ph, true).unwrap();
        check_hello(&p, true, &s, true).unwrap();
        let (pf, sf) = (hello_frame(&p, HELLO_AUTH), hello_frame(&s, HELLO_AUTH));
        let t = Transcript { primary_hello: &pf, secondary_hello: &sf };
        let proof_p = auth_proof(&kp, Role::Primary, &t).unwrap();
        check_proof(&ks, Role::Primary, &t, &proof_p).unwrap();
        let proof_s = auth_proof(&ks, Role::Secondary, &t).unwrap();
        check_proof(&kp, Role::Secondary, &t, &proof_s).unwrap();
        let keys = session_keys(&kp, &t).unwrap();
        assert_eq!(keys, session_keys(&ks, &t).unwrap());
        assert_ne!(keys.p2s, keys.s2p, "one key per direction");
        assert_eq!(keys.for_role(Role::Primary), (&keys.p2s, &keys.s2p));
        assert_eq!(keys.for_role(Role::Secondary), (&keys.s2p, &keys.p2s));
        let other = hello_frame(&hello(Role::Secondary, 100, 3), HELLO_AUTH);
        assert_ne!(keys, session_keys(&kp, &Transcript { primary_hello: &pf, secondary_hello: &other }).unwrap());
        // A frame sealed for one direction does not open in the other: it cannot be reflected.
        let (tx_p, rx_p) = (HostHmac(keys.p2s.to_vec()), HostHmac(keys.s2p.to_vec()));
        let f = frame(FrameType::Ping, 0, 0, &[0; 8], Some(&tx_p));
        assert_eq!(receive(&f, &mut RxSeq::new(), Some(&tx_p)).map(|h| h.seq), Ok(0));
        assert_eq!(receive(&f, &mut RxSeq::new(), Some(&rx_p)), Err(WireError::BadMac));
    }

    /// Issue 13, item 11: in protocol 1 the proofs covered the nonces only, so a man in the
    /// middle could change a HELLO's flags (strip `HELLO_INCONSISTENT`: the primary would never
    /// resync an interrupted resync) or size, and both proofs still verified. Now any change of
    /// either HELLO frame, as each side saw it, fails the proofs.
    #[test]
    fn the_proofs_cover_every_byte_of_both_hellos() {
        let k = HostHmac(b"secret".to_vec());
        let (p, s) = (hello(Role::Primary, 100, 1), hello(Role::Secondary, 100, 2));
        let pf = hello_frame(&p, HELLO_AUTH);
        let sf = hello_frame(&s, HELLO_AUTH | HELLO_INCONSISTENT);
        // The secondary's view (what it sent) and its proof.
        let t = Transcript { primary_hello: &pf, secondary_hello: &sf };
        let proof_s = auth_proof(&k, Role::Secondary, &t).unwrap();
        // The primary saw a HELLO with the flag stripped (and the CRC fixed up).
        let stripped = hello_frame(&s, HELLO_AUTH);
        let seen = Transcript { primary_hello: &pf, secondary_hello: &stripped };
        assert_eq!(check_proof(&k, Role::Secondary, &seen, &proof_s), Err(WireError::AuthFailed));
        // Any bit of either frame.
        for (which, len) in [(0, pf.len()), (1, sf.len())] {
            for bit in 0..len * 8 {
                let (mut a, mut b) = (pf.clone(), sf.clone());
                let f = if which == 0 { &mut a } else { &mut b };
                f[bit / 8] ^= 1 << (bit % 8);
                let t2 = Transcript { primary_hello: &a, secondary_hello: &b };
                assert_eq!(check_proof(&k, Role::Secondary, &t2, &proof_s), Err(WireError::AuthFailed), "frame {which} bit {bit}");
            }
        }
        check_proof(&k, Role::Secondary, &t, &proof_s).unwrap();
    }

    #[test]
    fn handshake_refuses_wrong_keys_reflection_and_mismatches() {
        let (kp, wrong) = (HostHmac(b"secret".to_vec()), HostHmac(b"guess".to_vec()));
        let (p, s) = (hello(Role::Primary, 100, 1), hello(Role::Secondary, 100, 2));
        let (pf, sf) = (hello_frame(&p, HELLO_AUTH), hello_frame(&s, HELLO_AUTH));
        let t = Transcript { primary_hello: &pf, secondary_hello: &sf };
        let proof = auth_proof(&wrong, Role::Primary, &t).unwrap();
        assert_eq!(check_proof(&kp, Role::Primary, &t, &proof), Err(WireError::AuthFailed));
        // The secondary's own proof sent back to it as the primary's.
        let reflected = auth_proof(&kp, Role::Secondary, &t).unwrap();
        assert_eq!(check_proof(&kp, Role::Primary, &t, &reflected), Err(WireError::AuthFailed));
        assert_eq!(check_proof(&kp, Role::Primary, &t, &proof[..31]), Err(WireError::BadLength));
        assert_eq!(check_hello(&p, true, &p, true), Err(WireError::BadRole));
        assert_eq!(check_hello(&p, true, &s, false), Err(WireError::AuthMismatch));
        assert_eq!(check_hello(&p, false, &hello(Role::Secondary, 99, 2), false), Err(WireError::TooSmall));
        let mut bad = [0u8; Hello::LEN];
        bad[0] = 3;
        assert_eq!(Hello::decode(&bad), Err(WireError::BadField));
    }

    #[test]
    fn protocol_1_frames_are_refused_and_acks_may_flag_an_ignored_marker() {
        let mut f = frame(FrameType::Ping, 0, 0, &[0; 8], None);
        f[4] = 1;
        let hdr: &[u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
        assert_eq!(Header::decode(hdr), Err(WireError::BadVersion));
        assert!(WireError::BadVersion.as_str().contains("protocol 2"), "{}", WireError::BadVersion.as_str());
        let ack = Ack { seq: 7, durable_epoch: 1 }.encode();
        let f = frame(FrameType::Ack, ACK_MARKER_IGNORED, 0, &ack, None);
        assert_eq!(receive(&f, &mut RxSeq::new(), None).map(|h| h.flags), Ok(ACK_MARKER_IGNORED));
        let mut f = f;
        f[6] = 2;
        assert_eq!(receive(&f, &mut RxSeq::new(), None), Err(WireError::BadFlags));
    }

    fn any_type() -> impl Strategy<Value = FrameType> {
        (1u8..=10).prop_map(|v| FrameType::from_u8(v).unwrap())
    }

    fn valid_payload(ty: FrameType, sectors: usize, fill: u8) -> Vec<u8> {
        let (min, _) = ty.len_range();
        match ty {
            FrameType::Write | FrameType::ResyncWrite => {
                let mut p = vec![0u8; WRITE_FIXED as usize];
                p.extend(std::iter::repeat_n(fill, 512 * sectors.max(1)));
                p
            }
            FrameType::Hello => hello(Role::Primary, 1, fill).encode(&mut [0u8; Hello::LEN]).to_vec(),
            _ => vec![fill; min as usize],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
            ..ProptestConfig::default()
        })]

        /// Random bytes never panic the receiver, and are (almost surely) refused.
        #[test]
        fn random_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut rx = RxSeq::new();
            let key = HostHmac(vec![5; 32]);
            prop_assert!(receive(&bytes, &mut rx, Some(&key)).is_err());
            let mut rx = RxSeq::new();
            let _ = receive(&bytes, &mut rx, None);
            if let Ok(h) = bytes.get(..HEADER_LEN).map(|b| Header::decode(b.try_into().unwrap())).unwrap_or(Err(WireError::Truncated)) {
                prop_assert!(h.len <= MAX_PAYLOAD);
            }
            let _ = Hello::decode(&bytes);
            let _ = Marker::decode(&bytes);
            let _ = Ack::decode(&bytes);
            let _ = Write::decode(&bytes, u64::MAX);
        }

        /// Every frame type round-trips, and any single flipped bit of a sealed frame is caught
        /// (by the header checks, the CRC or the MAC).
        #[test]
        fn sealed_frames_round_trip_and_every_bit_flip_is_caught(
            ty in any_type(),
            sectors in 1usize..4,
            fill in any::<u8>(),
            seq in 0u64..4,
            flip in any::<prop::sample::Index>(),
            authed in any::<bool>(),
        ) {
            let key = HostHmac(vec![9; 32]);
            let mac: Option<&dyn Hmac> = if authed { Some(&key) } else { None };
            let payload = valid_payload(ty, sectors, fill);
            let f = frame(ty, 0, seq, &payload, mac);
            let mut rx = RxSeq { next: seq };
            prop_assert_eq!(receive(&f, &mut rx, mac).map(|h| h.len as usize), Ok(payload.len()));
            let mut g = f.clone();
            let bit = flip.index(g.len() * 8);
            g[bit / 8] ^= 1 << (bit % 8);
            let mut rx = RxSeq { next: seq };
            prop_assert!(receive(&g, &mut rx, mac).is_err());
            // Truncated by one byte.
            let mut rx = RxSeq { next: seq };
            prop_assert_eq!(receive(&f[..f.len() - 1], &mut rx, mac), Err(WireError::Truncated));
        }
    }
}
