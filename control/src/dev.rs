//! Seeds `sluice dev`: a demo team, mock provider credentials, open profiles `default` and
//! `demo`, a `keyed` profile that needs a virtual key, the demo policies, a virtual key and a
//! token for the embedded proxy.

use sqlx::Row;

use crate::crypto::{ADMIN_KEY_PREFIX, NewKey, import_key, new_key};
use crate::documents::{ProfileBody, UpstreamSettings};
use crate::error::ApiError;
use crate::identity::store_admin_key;
use crate::secrets::store_virtual_key;
use crate::state::AppState;
use crate::store::{new_id, now_ms};

/// What the seed made.
#[derive(Debug)]
pub struct DevSeed {
    /// A virtual key for the `keyed` profile.
    pub virtual_key: String,
    /// The embedded proxy's token (role `proxy`).
    pub proxy_token: String,
    /// A fresh admin key, when one was asked for.
    pub admin_key: Option<String>,
}

async fn insert_doc(
    state: &AppState,
    org: &str,
    kind: &str,
    prefix: &str,
    name: &str,
    team: Option<&str>,
    body: &serde_json::Value,
) -> Result<String, ApiError> {
    let id = new_id(prefix);
    sqlx::query(
        "INSERT INTO documents (kind, id, org_id, team_id, name, body, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(kind)
    .bind(&id)
    .bind(org)
    .bind(team.map(str::to_owned))
    .bind(name)
    .bind(body.to_string())
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok(id)
}

async fn insert_doc_with_id(
    state: &AppState,
    org: &str,
    kind: &str,
    id: &str,
    body: &serde_json::Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO documents (kind, id, org_id, team_id, name, body, created_at, updated_at) VALUES ($1, $2, $3, NULL, $2, $4, $5, $5)",
    )
    .bind(kind)
    .bind(id)
    .bind(org)
    .bind(body.to_string())
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

/// Seeds once; on later starts only issues the keys. With `new_admin_key`, also issues an
/// admin key for the organisation's first admin.
pub async fn seed(
    state: &AppState,
    org_id: &str,
    fixed_virtual_key: Option<&str>,
    new_admin_key: bool,
    mcp_command: Vec<String>,
) -> Result<DevSeed, ApiError> {
    let keyed = sqlx::query("SELECT id FROM documents WHERE kind = 'profiles' AND name = 'keyed'")
        .fetch_optional(&state.db.pool)
        .await?;
    let keyed_id = match keyed {
        Some(r) => r.try_get::<String, _>("id")?,
        None => seed_fresh(state, org_id).await?,
    };
    // The demo MCP server runs this binary's fixture over stdio; its path may have moved
    // since the database was seeded, so the document is written anew on every start.
    sqlx::query("DELETE FROM documents WHERE kind = 'mcp_servers' AND name = 'demo'")
        .execute(&state.db.pool)
        .await?;
    let mcp = serde_json::json!({"name": "demo", "transport": "stdio", "command": mcp_command,
        "description": "the fixture MCP server (sluice mock-mcp --stdio)"});
    insert_doc(state, org_id, "mcp_servers", "mcp", "demo", None, &mcp).await?;
    state.publish().await?;
    let vkey: NewKey = match fixed_virtual_key {
        Some(k) => import_key(sluice_proxy::keys::VIRTUAL_KEY_PREFIX, k).ok_or_else(|| {
            ApiError::Unprocessable(
                "SLUICE_DEV_VIRTUAL_KEY must look like sk-sluice-<16 hex>-<48 hex>".into(),
            )
        })?,
        None => new_key(sluice_proxy::keys::VIRTUAL_KEY_PREFIX),
    };
    let known = sqlx::query("SELECT COUNT(*) AS n FROM virtual_keys WHERE id = $1")
        .bind(&vkey.id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get::<i64, _>("n")?;
    if known == 0 {
        store_virtual_key(state, org_id, &keyed_id, "dev", &vkey, None).await?;
    }
    let proxy_member: String = sqlx::query(
        "SELECT m.id FROM members m JOIN roles r ON r.id = m.role_id WHERE m.org_id = $1 AND r.name = 'proxy' LIMIT 1",
    )
    .bind(org_id)
    .fetch_one(&state.db.pool)
    .await?
    .try_get("id")?;
    let token = new_key(ADMIN_KEY_PREFIX);
    store_admin_key(&state.db, org_id, &proxy_member, "dev proxy", &token, None).await?;
    let admin_key = if new_admin_key {
        let admin: String = sqlx::query(
            "SELECT m.id FROM members m JOIN roles r ON r.id = m.role_id WHERE m.org_id = $1 AND r.name = 'admin' \
             ORDER BY m.created_at LIMIT 1",
        )
        .bind(org_id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("id")?;
        let k = new_key(ADMIN_KEY_PREFIX);
        store_admin_key(&state.db, org_id, &admin, "dev", &k, None).await?;
        Some(k.key)
    } else {
        None
    };
    Ok(DevSeed {
        virtual_key: vkey.key,
        proxy_token: token.key,
        admin_key,
    })
}

async fn seed_fresh(state: &AppState, org: &str) -> Result<String, ApiError> {
    let team = new_id("team");
    sqlx::query(
        "INSERT INTO teams (id, org_id, name, created_at) VALUES ($1, $2, 'demo-team', $3)",
    )
    .bind(&team)
    .bind(org)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    let proxy_role: String =
        sqlx::query("SELECT id FROM roles WHERE org_id = $1 AND name = 'proxy'")
            .bind(org)
            .fetch_one(&state.db.pool)
            .await?
            .try_get("id")?;
    sqlx::query(
        "INSERT INTO members (id, org_id, name, email, role_id, teams, created_at) VALUES ($1, $2, 'dev proxy', 'proxy@localhost', $3, '[]', $4)",
    )
    .bind(new_id("mem"))
    .bind(org)
    .bind(proxy_role)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    let mut creds = Vec::new();
    for provider in ["openai", "anthropic", "gemini"] {
        let id = new_id("cred");
        let (nonce, ct) = state
            .master
            .seal(&id, &format!("mock-{provider}-key"))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO credentials (id, org_id, name, provider, nonce, ciphertext, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(org)
        .bind(format!("mock {provider}"))
        .bind(provider)
        .bind(nonce)
        .bind(ct)
        .bind(now_ms())
        .execute(&state.db.pool)
        .await?;
        creds.push(id);
    }
    let open = |name: &str| ProfileBody {
        name: name.into(),
        team_id: None,
        labels: Default::default(),
        starts_untrusted: false,
        require_virtual_key: false,
        capture_content: false,
        toon_tool_results: false,
        policy_defaults: None,
        openai: Some(UpstreamSettings::default()),
        anthropic: Some(UpstreamSettings::default()),
        gemini: Some(UpstreamSettings::default()),
        mcp_servers: vec!["demo".into()],
    };
    for name in ["default", "demo"] {
        let body =
            serde_json::to_value(open(name)).map_err(|e| ApiError::Internal(e.to_string()))?;
        insert_doc(state, org, "profiles", "prof", name, None, &body).await?;
    }
    let with = |c: &String| UpstreamSettings {
        credential_id: Some(c.clone()),
        ..UpstreamSettings::default()
    };
    let keyed = ProfileBody {
        team_id: Some(team.clone()),
        require_virtual_key: true,
        openai: creds.first().map(with),
        anthropic: creds.get(1).map(with),
        gemini: creds.get(2).map(with),
        ..open("keyed")
    };
    let body = serde_json::to_value(&keyed).map_err(|e| ApiError::Internal(e.to_string()))?;
    let keyed_id = insert_doc(state, org, "profiles", "prof", "keyed", Some(&team), &body).await?;
    let result = [
        serde_json::json!({"id": "web-pages-are-untrusted", "tool": {"source": "*", "name": "fetch_url"}, "action": "untrusted"}),
        serde_json::json!({"id": "email-is-untrusted", "tool": {"source": "mcp:demo", "name": "read_inbox"}, "action": "untrusted"}),
        serde_json::json!({"id": "weather-is-trusted", "tool": {"source": "profile:*", "name": "get_weather"}, "action": "trusted"}),
    ];
    for p in result {
        let name = p["id"].as_str().unwrap_or_default().to_owned();
        insert_doc_with_id(state, org, "result_policies", &name, &p).await?;
    }
    let invocation = [
        serde_json::json!({"id": "no-email-after-untrusted-content", "tool": {"source": "*", "name": "send_email"},
            "action": "block_when_untrusted",
            "reason": "email cannot be sent after the conversation read untrusted content (a fetched web page or an email)"}),
        serde_json::json!({"id": "weather-always-ok", "tool": {"source": "profile:*", "name": "get_weather"}, "action": "allow_when_untrusted"}),
    ];
    for p in invocation {
        let name = p["id"].as_str().unwrap_or_default().to_owned();
        insert_doc_with_id(state, org, "invocation_policies", &name, &p).await?;
    }
    state.publish().await?;
    Ok(keyed_id)
}
