//! Sluice virtual keys: what a client sends where its SDK sends a provider key. The proxy
//! checks them against salted digests in its snapshot (no database on the request path), in
//! constant time, and rate-limits failed attempts per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix every virtual key starts with.
pub const VIRTUAL_KEY_PREFIX: &str = "sk-sluice-";

/// `(id, secret)` of a key `<prefix><16 hex>-<48 hex>`, if it has that format.
pub fn split_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('-')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 48)).then_some((id, secret))
}

/// SHA-256 over the salt, a zero byte and the secret, as lower-case hex. The secrets are 192
/// random bits, so a fast hash is enough; the salt keeps equal secrets from equal digests.
pub fn salted_digest(salt_hex: &str, secret: &str) -> String {
    // Hex digits only: always valid UTF-8.
    String::from_utf8_lossy(&digest_hex(salt_hex, secret)).into_owned()
}

/// [`salted_digest`] on the stack (checked on every request: no allocation).
fn digest_hex(salt_hex: &str, secret: &str) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(salt_hex.as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(h.finalize()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// True when `secret` hashes to `digest_hex`; the comparison takes the same time wherever the
/// digests differ.
pub fn verify_digest(salt_hex: &str, digest_hex_expected: &str, secret: &str) -> bool {
    digest_hex(salt_hex, secret)
        .as_slice()
        .ct_eq(digest_hex_expected.as_bytes())
        .into()
}

/// One virtual key in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualKey {
    /// Public id.
    pub id: Arc<str>,
    /// The profile it serves.
    pub profile: Arc<str>,
    /// Salt, hex. (Shared: a key checked is copied into its request.)
    pub salt: Arc<str>,
    /// Digest, hex.
    pub digest: Arc<str>,
    /// Expiry (ms since the epoch), if any.
    pub expires_at_ms: Option<i64>,
}

/// Why a virtual key was refused (the message never repeats the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Not a known key, or the secret does not match (revoked keys are not in the snapshot).
    Invalid,
    /// Past its expiry.
    Expired,
}

/// Checks `key` against the snapshot's keys.
pub fn check(
    keys: &crate::config::NameMap<Arc<str>, VirtualKey>,
    key: &str,
) -> Result<VirtualKey, KeyRefusal> {
    let (id, secret) = split_key(VIRTUAL_KEY_PREFIX, key).ok_or(KeyRefusal::Invalid)?;
    let entry = keys.get(id).ok_or(KeyRefusal::Invalid)?;
    if !verify_digest(&entry.salt, &entry.digest, secret) {
        return Err(KeyRefusal::Invalid);
    }
    if entry.expires_at_ms.is_some_and(|e| e <= now_ms()) {
        return Err(KeyRefusal::Expired);
    }
    Ok(entry.clone())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Counts failed key attempts per client address in fixed windows; past the limit the
/// address is refused until its window ends. Bounded: at most `max_addresses` are tracked,
/// and when full, expired windows are dropped first and new addresses are refused while
/// the table stays full (an attacker cannot evict others' counters to reset its own).
#[derive(Debug)]
pub struct FailedAuthLimiter {
    window: Duration,
    max_addresses: usize,
    table: parking_lot::Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedAuthLimiter {
    /// Counts failures per `window` per address, for at most `max_addresses` addresses.
    pub fn new(window: Duration, max_addresses: usize) -> Self {
        Self {
            window,
            max_addresses,
            table: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` when `addr` has `limit` failures in its window.
    pub fn blocked(&self, addr: IpAddr, limit: u32) -> Option<u64> {
        let t = self.table.lock();
        let (start, n) = t.get(&addr)?;
        let elapsed = start.elapsed();
        (elapsed < self.window && *n >= limit).then(|| (self.window - elapsed).as_secs().max(1))
    }

    /// Records one failure for `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let mut t = self.table.lock();
        let now = Instant::now();
        if !t.contains_key(&addr) && t.len() >= self.max_addresses {
            let window = self.window;
            t.retain(|_, (start, _)| now.duration_since(*start) < window);
            if t.len() >= self.max_addresses {
                return;
            }
        }
        let e = t.entry(addr).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// The key that encrypts provider credentials, and during a rotation the one it replaces
/// (`SLUICE_MASTER_KEY_PREVIOUS`): what the previous key sealed still opens, and the
/// control plane re-seals it under the current one when it starts.
#[derive(Clone)]
pub struct MasterKey {
    current: Aes256Gcm,
    previous: Option<Aes256Gcm>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// Why a master key or a ciphertext was refused.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key text is not 64 hex digits.
    #[error(
        "SLUICE_MASTER_KEY must be 64 hex digits (32 random bytes, e.g. `openssl rand -hex 32`)"
    )]
    BadMasterKey,
    /// The previous key's text is not 64 hex digits.
    #[error("SLUICE_MASTER_KEY_PREVIOUS must be 64 hex digits, like SLUICE_MASTER_KEY")]
    BadPreviousKey,
    /// Decryption failed: wrong master key or tampered data.
    #[error(
        "a stored credential cannot be decrypted: SLUICE_MASTER_KEY differs from the one it was stored with"
    )]
    Decrypt,
}

fn cipher(text: &str) -> Option<Aes256Gcm> {
    let bytes = from_hex(text.trim()).ok()?;
    Aes256Gcm::new_from_slice(&bytes).ok()
}

impl MasterKey {
    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            current: cipher(text).ok_or(CryptoError::BadMasterKey)?,
            previous: None,
        })
    }

    /// The key being replaced, during a rotation: what it sealed still opens.
    pub fn with_previous(mut self, text: &str) -> Result<Self, CryptoError> {
        self.previous = Some(cipher(text).ok_or(CryptoError::BadPreviousKey)?);
        Ok(self)
    }

    /// Whether a previous key is set (a rotation is under way).
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// A fresh random key, as hex (for `sluice dev`, which keeps it beside its database).
    pub fn generate_hex() -> String {
        let mut k = [0u8; 32];
        fill_random(&mut k);
        to_hex(&k)
    }

    /// Encrypts `plain` under the current key, bound to `context` (the credential's id):
    /// `(nonce hex, ciphertext hex)`.
    pub fn seal(&self, context: &str, plain: &str) -> Result<(String, String), CryptoError> {
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce);
        let ct = self
            .current
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        Ok((to_hex(&nonce), to_hex(&ct)))
    }

    /// Decrypts what [`MasterKey::seal`] made, under the current key or the previous one.
    pub fn open(
        &self,
        context: &str,
        nonce_hex: &str,
        ct_hex: &str,
    ) -> Result<String, CryptoError> {
        self.open_with(context, nonce_hex, ct_hex)
            .map(|(plain, _)| plain)
    }

    /// Decrypts, and says whether it took the previous key (the value needs re-sealing).
    pub fn open_with(
        &self,
        context: &str,
        nonce_hex: &str,
        ct_hex: &str,
    ) -> Result<(String, bool), CryptoError> {
        let nonce = from_hex(nonce_hex).map_err(|_| CryptoError::Decrypt)?;
        let ct = from_hex(ct_hex).map_err(|_| CryptoError::Decrypt)?;
        if nonce.len() != 12 {
            return Err(CryptoError::Decrypt);
        }
        let payload = || Payload {
            msg: &ct,
            aad: context.as_bytes(),
        };
        let nonce = Nonce::from_slice(&nonce);
        let (plain, previous) = match self.current.decrypt(nonce, payload()) {
            Ok(p) => (p, false),
            Err(_) => match &self.previous {
                Some(old) => (
                    old.decrypt(nonce, payload())
                        .map_err(|_| CryptoError::Decrypt)?,
                    true,
                ),
                None => return Err(CryptoError::Decrypt),
            },
        };
        String::from_utf8(plain)
            .map(|p| (p, previous))
            .map_err(|_| CryptoError::Decrypt)
    }
}

fn fill_random(buf: &mut [u8]) {
    // The OS random source does not fail on Linux after boot; aborting is the only safe
    // answer if it ever did.
    if getrandom::fill(buf).is_err() {
        std::process::abort();
    }
}

fn to_hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 15)]));
    }
    out
}

fn from_hex(s: &str) -> Result<Vec<u8>, ()> {
    if !s.len().is_multiple_of(2) {
        return Err(());
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8).ok_or(());
    s.as_bytes()
        .chunks(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(secret: &str, expires: Option<i64>) -> crate::config::NameMap<Arc<str>, VirtualKey> {
        let salt = "00ff".to_owned();
        let digest = salted_digest(&salt, secret);
        let k = VirtualKey {
            id: "0123456789abcdef".into(),
            profile: "p".into(),
            salt: salt.into(),
            digest: digest.into(),
            expires_at_ms: expires,
        };
        [(k.id.clone(), k)].into_iter().collect()
    }

    #[test]
    fn the_digest_is_sha256_of_salt_zero_secret_in_hex() {
        // hashlib.sha256(b"00ff\x00sk-secret").hexdigest()
        let want = "62fc085bac9efaedb91ced7b73ab060118aff3293aba01f1d8bb76f5b2906634";
        assert_eq!(salted_digest("00ff", "sk-secret"), want);
        assert!(verify_digest("00ff", want, "sk-secret"));
        assert!(!verify_digest("00ff", want, "sk-secreT"));
        assert!(!verify_digest("00fe", want, "sk-secret"));
    }

    #[test]
    fn keys_check_by_id_and_secret() {
        let secret = "a".repeat(48);
        let key = format!("sk-sluice-0123456789abcdef-{secret}");
        assert!(check(&table(&secret, None), &key).is_ok());
        let wrong = format!("sk-sluice-0123456789abcdef-{}", "b".repeat(48));
        assert_eq!(
            check(&table(&secret, None), &wrong),
            Err(KeyRefusal::Invalid)
        );
        assert_eq!(
            check(&table(&secret, Some(1)), &key),
            Err(KeyRefusal::Expired)
        );
        assert_eq!(
            check(&table(&secret, None), "sk-other"),
            Err(KeyRefusal::Invalid)
        );
    }

    #[test]
    fn failures_are_limited_per_address() {
        let l = FailedAuthLimiter::new(Duration::from_secs(60), 1);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert_eq!(l.blocked(a, 2), None);
        l.failed(a);
        assert_eq!(l.blocked(a, 2), None);
        l.failed(a);
        assert!(l.blocked(a, 2).is_some_and(|s| s >= 1));
        // The table is full: b is not tracked and cannot evict a.
        l.failed(b);
        assert_eq!(l.blocked(b, 2), None);
        assert!(l.blocked(a, 2).is_some());
    }
}
