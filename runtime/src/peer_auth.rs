//! Peer authentication with a shared cluster secret (issue 13, section 4). A peer connection
//! opens with a mutual challenge: the caller sends a fresh nonce with its hello, the acceptor
//! answers with its own nonce and a proof that it knows the secret, the caller checks it and
//! answers with its proof. Each proof is an HMAC-SHA256 under the secret of both nonces, both
//! node ids and the prover's role, so a proof recorded on one connection is worth nothing on
//! the next (a fresh nonce from the other side) and cannot be reflected back as the other
//! side's. Every frame after that carries an HMAC under a key of that connection over a frame
//! counter and the frame: a frame forged, altered, replayed, reordered or dropped by whoever
//! sits on the wire does not open, and the connection is closed.
//!
//! This authenticates peers and their frames; it does not hide them (TLS would).

use hmac::{Hmac, Mac};
use raft_kv_core::NodeId;
use sha2::Sha256;
use std::sync::Arc;

/// Bytes of a nonce and of a proof or frame tag.
pub const NONCE_BYTES: usize = 32;
pub const TAG_BYTES: usize = 32;

/// The shortest secret accepted: 16 bytes, 128 bits if they are random.
pub const SECRET_BYTES_MIN: usize = 16;

pub type Nonce = [u8; NONCE_BYTES];
pub type Tag = [u8; TAG_BYTES];

type HmacSha256 = Hmac<Sha256>;

/// Which side of a connection a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node that opened the connection (and sends Raft messages on it).
    Caller,
    /// The node that accepted it.
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Caller => b"raft-kv peer proof: caller",
            Role::Acceptor => b"raft-kv peer proof: acceptor",
        }
    }
}

/// The secret every member of a cluster shares. Its bytes are never logged.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    pub fn new(bytes: &[u8]) -> Result<ClusterSecret, String> {
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(format!(
                "the cluster secret is {} bytes; at least {SECRET_BYTES_MIN} are needed (e.g. `head -c 32 /dev/urandom | base64`)",
                bytes.len()
            ));
        }
        Ok(ClusterSecret(bytes.into()))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }
}

/// Who the connection is between and its two nonces: what every proof and frame key binds.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    pub caller: NodeId,
    pub acceptor: NodeId,
    pub caller_nonce: Nonce,
    pub acceptor_nonce: Nonce,
}

impl Session {
    fn bind(&self, mut mac: HmacSha256, label: &[u8]) -> HmacSha256 {
        mac.update(label);
        mac.update(&self.caller_nonce);
        mac.update(&self.acceptor_nonce);
        mac.update(&self.caller.0.to_le_bytes());
        mac.update(&self.acceptor.0.to_le_bytes());
        mac
    }

    /// `role`'s proof that it knows `secret`, for this connection.
    pub fn proof(&self, secret: &ClusterSecret, role: Role) -> Tag {
        self.bind(secret.mac(), role.label()).finalize().into_bytes().into()
    }

    /// Whether `proof` is `role`'s proof for this connection (compared in constant time).
    pub fn verify(&self, secret: &ClusterSecret, role: Role, proof: &[u8]) -> bool {
        self.bind(secret.mac(), role.label()).verify_slice(proof).is_ok()
    }

    /// The MAC of this connection's frames.
    pub fn frames(&self, secret: &ClusterSecret) -> FrameMac {
        let key = self.bind(secret.mac(), b"raft-kv peer frames").finalize().into_bytes();
        FrameMac {
            key: HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length"),
            next: 0,
        }
    }
}

/// Seals the frames of one connection on the sending side and opens them on the receiving
/// side; both count frames from 0, so each frame's tag covers its place in the stream.
pub struct FrameMac {
    key: HmacSha256,
    next: u64,
}

impl FrameMac {
    fn tag(&self, frame: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(&self.next.to_le_bytes());
        mac.update(frame);
        mac
    }

    /// Appends the next frame's tag to `frame`.
    pub fn seal(&mut self, frame: &mut Vec<u8>) {
        let tag = self.tag(frame).finalize().into_bytes();
        frame.extend_from_slice(&tag);
        self.next += 1;
    }

    /// The frame without its tag, if the tag is the next frame's; None otherwise (and the
    /// connection must be closed: the count no longer matches the sender's).
    pub fn open<'a>(&mut self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let split = sealed.len().checked_sub(TAG_BYTES)?;
        let (frame, tag) = sealed.split_at(split);
        self.tag(frame).verify_slice(tag).ok()?;
        self.next += 1;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            caller: NodeId(1),
            acceptor: NodeId(2),
            caller_nonce: [7; NONCE_BYTES],
            acceptor_nonce: [9; NONCE_BYTES],
        }
    }

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn a_short_secret_is_refused() {
        let e = ClusterSecret::new(b"too short").unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn a_proof_holds_only_for_its_secret_role_nonces_and_ids() {
        let s = secret("correct horse battery staple");
        let good = session().proof(&s, Role::Caller);
        assert!(session().verify(&s, Role::Caller, &good));
        // Reflected as the other side's proof.
        assert!(!session().verify(&s, Role::Acceptor, &good));
        // Under another secret.
        assert!(!session().verify(&secret("another secret, same length!"), Role::Caller, &good));
        // On a connection with another nonce (a replayed handshake).
        let mut other = session();
        other.acceptor_nonce[0] ^= 1;
        assert!(!other.verify(&s, Role::Caller, &good));
        // Claiming another id.
        let mut other = session();
        other.caller = NodeId(3);
        assert!(!other.verify(&s, Role::Caller, &good));
        assert!(!session().verify(&s, Role::Caller, &good[..TAG_BYTES - 1]));
    }

    #[test]
    fn frames_open_once_in_order_and_unaltered() {
        let s = secret("correct horse battery staple");
        let mut tx = session().frames(&s);
        let mut rx = session().frames(&s);
        let mut a = b"first".to_vec();
        let mut b = b"second".to_vec();
        tx.seal(&mut a);
        tx.seal(&mut b);
        assert_eq!(rx.open(&a), Some(&b"first"[..]));
        // Replayed.
        assert_eq!(rx.open(&a), None);
        assert_eq!(rx.open(&b), Some(&b"second"[..]));

        // Out of order.
        let mut rx = session().frames(&s);
        assert_eq!(rx.open(&b), None);

        // Altered, truncated, or sealed for another connection.
        let mut rx = session().frames(&s);
        let mut altered = a.clone();
        altered[0] ^= 1;
        assert_eq!(rx.open(&altered), None);
        assert_eq!(rx.open(&a[..3]), None);
        let mut other = session();
        other.caller_nonce[5] ^= 1;
        assert_eq!(other.frames(&s).open(&a), None);
    }
}
