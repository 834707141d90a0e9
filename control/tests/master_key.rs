//! Rotating the master key, on SQLite and PostgreSQL: a control plane started with a new
//! `SLUICE_MASTER_KEY` and the old one as `SLUICE_MASTER_KEY_PREVIOUS` re-seals every
//! credential under the new key, so proxies need only the new key once they have the next
//! snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, Api, control_keyed, stores};
use serde_json::json;
use sluice_control::crypto::MasterKey;

fn key(hex: &str) -> MasterKey {
    MasterKey::from_hex(hex).unwrap()
}

#[tokio::test]
async fn a_restart_with_the_previous_key_reseals_every_credential() {
    for (engine, url, _dir) in stores().await {
        let (old, new) = (MasterKey::generate_hex(), MasterKey::generate_hex());
        let c = control_keyed(&url, None, key(&old)).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        let cred = api
            .create(
                "/credentials",
                json!({"name": "openai", "provider": "openai", "api_key": "sk-rotate-me"}),
            )
            .await;
        api.create(
            "/profiles",
            json!({"name": "shop", "openai": {"credential_id": cred["id"]}}),
        )
        .await;
        c.task.abort();

        let rotating = key(&new).with_previous(&old).unwrap();
        let c = control_keyed(&url, None, rotating).await;
        let (_, snap) = Api::new(c.addr, Some(ADMIN_KEY))
            .get("/snapshots/latest")
            .await;
        let sealed = &snap["config"]["profiles"]["shop"]["openai"]["api_key_sealed"];
        let (id, nonce, ct) = (
            sealed["credential_id"].as_str().unwrap(),
            sealed["nonce"].as_str().unwrap(),
            sealed["ciphertext"].as_str().unwrap(),
        );
        assert_eq!(id, cred["id"].as_str().unwrap());
        assert_eq!(
            key(&new).open(id, nonce, ct).unwrap(),
            "sk-rotate-me",
            "{engine}: the new key alone opens it"
        );
        assert!(key(&old).open(id, nonce, ct).is_err(), "{engine}");
        c.task.abort();

        // Started again with the rotation still configured: nothing left to re-seal.
        let c = control_keyed(&url, None, key(&new).with_previous(&old).unwrap()).await;
        let (_, again) = Api::new(c.addr, Some(ADMIN_KEY))
            .get("/snapshots/latest")
            .await;
        assert_eq!(
            again["config"]["profiles"]["shop"]["openai"]["api_key_sealed"]["ciphertext"], ct,
            "{engine}"
        );
        c.task.abort();
    }
}

#[test]
fn a_bad_previous_key_is_refused_with_its_name() {
    let e = key(&MasterKey::generate_hex())
        .with_previous("not hex")
        .unwrap_err();
    assert!(e.to_string().contains("SLUICE_MASTER_KEY_PREVIOUS"), "{e}");
}
