//! Keys and secrets: random generation, salted digests compared in constant time, and
//! provider credentials encrypted at rest with AES-256-GCM under `SLUICE_MASTER_KEY`.

/// Fills `buf` from the OS's random source. Aborting is the only safe answer when the OS
/// cannot give randomness, and that never happens on Linux after boot.
pub fn random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        std::process::abort();
    }
}

/// The prefix of admin API keys.
pub const ADMIN_KEY_PREFIX: &str = "sluice-admin-";

/// A generated key, before it is shown (once) and forgotten.
#[derive(Debug)]
pub struct NewKey {
    /// Its public id (also part of the key).
    pub id: String,
    /// The whole key, shown once.
    pub key: String,
    /// Salt, hex.
    pub salt: String,
    /// SHA-256(salt || secret), hex.
    pub digest: String,
}

/// Makes a key `<prefix><16 hex id>-<48 hex secret>`.
pub fn new_key(prefix: &str) -> NewKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 24];
    random(&mut id);
    random(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let key = format!("{prefix}{id}-{secret}");
    let (salt, digest) = digest_secret(&secret);
    NewKey {
        id,
        key,
        salt,
        digest,
    }
}

/// Stores a key given from outside (bootstrap or fixed dev keys): it must have the format.
pub fn import_key(prefix: &str, key: &str) -> Option<NewKey> {
    let (id, secret) = split_key(prefix, key)?;
    let (salt, digest) = digest_secret(secret);
    Some(NewKey {
        id: id.to_owned(),
        key: key.to_owned(),
        salt,
        digest,
    })
}

pub use sluice_proxy::keys::{salted_digest, split_key, verify_digest as verify};

fn digest_secret(secret: &str) -> (String, String) {
    let mut salt = [0u8; 16];
    random(&mut salt);
    let salt = hex::encode(salt);
    let digest = salted_digest(&salt, secret);
    (salt, digest)
}

pub use sluice_proxy::keys::{CryptoError, MasterKey};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_only_with_their_secret() {
        let k = new_key("sk-sluice-");
        let (id, secret) = split_key("sk-sluice-", &k.key).expect("format");
        assert_eq!(id, k.id);
        assert!(verify(&k.salt, &k.digest, secret));
        assert!(!verify(
            &k.salt,
            &k.digest,
            &secret.replace('a', "b").replace('1', "2")
        ));
        assert!(split_key("sk-sluice-", "sk-sluice-zz-1").is_none());
    }

    #[test]
    fn sealed_credentials_open_only_in_their_context() {
        let key = MasterKey::from_hex(&MasterKey::generate_hex()).expect("key");
        let (n, ct) = key.seal("cred_1", "sk-provider").expect("seal");
        assert_eq!(key.open("cred_1", &n, &ct).expect("open"), "sk-provider");
        assert!(key.open("cred_2", &n, &ct).is_err());
        let other = MasterKey::from_hex(&MasterKey::generate_hex()).expect("key");
        assert!(other.open("cred_1", &n, &ct).is_err());
        assert!(MasterKey::from_hex("short").is_err());
    }
}
