//! Authentication (admin API keys) and RBAC: roles are sets of (resource, action)
//! permissions; every route declares the one it needs.

use std::collections::BTreeSet;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sqlx::Row;

use crate::crypto::{ADMIN_KEY_PREFIX, split_key, verify};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::now_ms;

macro_rules! resources {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// What a permission is about.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Resource {
            $(
                #[doc = $name]
                $variant,
            )*
        }
        impl Resource {
            /// Every resource.
            pub const ALL: &'static [Resource] = &[$(Resource::$variant),*];
            /// Its name in permissions (`profiles:write`).
            pub fn as_str(self) -> &'static str {
                match self { $(Resource::$variant => $name),* }
            }
        }
    };
}

resources! {
    Organisations => "organisations",
    Teams => "teams",
    Members => "members",
    Roles => "roles",
    AdminKeys => "admin_keys",
    Profiles => "profiles",
    Credentials => "credentials",
    VirtualKeys => "virtual_keys",
    Tools => "tools",
    Policies => "policies",
    Approvals => "approvals",
    Prices => "prices",
    Limits => "limits",
    OptimisationRules => "optimisation_rules",
    McpServers => "mcp_servers",
    Logs => "logs",
    Snapshots => "snapshots",
    Usage => "usage",
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// List and get.
    Read,
    /// Create, change, delete.
    Write,
}

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Perm {
    /// The resource.
    pub resource: Resource,
    /// The action.
    pub action: Action,
}

/// `Perm` for `resource:read`.
pub const fn read(resource: Resource) -> Perm {
    Perm {
        resource,
        action: Action::Read,
    }
}

/// `Perm` for `resource:write`.
pub const fn write(resource: Resource) -> Perm {
    Perm {
        resource,
        action: Action::Write,
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = match self.action {
            Action::Read => "read",
            Action::Write => "write",
        };
        write!(f, "{}:{a}", self.resource.as_str())
    }
}

impl std::str::FromStr for Perm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (r, a) = s
            .split_once(':')
            .ok_or_else(|| format!("permission '{s}' must be resource:read or resource:write"))?;
        let resource = Resource::ALL
            .iter()
            .copied()
            .find(|x| x.as_str() == r)
            .ok_or_else(|| format!("unknown resource '{r}' in permission '{s}'"))?;
        let action = match a {
            "read" => Action::Read,
            "write" => Action::Write,
            _ => return Err(format!("action in '{s}' must be read or write")),
        };
        Ok(Perm { resource, action })
    }
}

/// Every permission there is (the built-in `admin` role).
pub fn all_permissions() -> BTreeSet<Perm> {
    Resource::ALL
        .iter()
        .flat_map(|r| [read(*r), write(*r)])
        // Only what some route checks: logs and snapshots are read-only, usage write-only.
        .filter(|p| match p.resource {
            Resource::Usage => p.action == Action::Write,
            Resource::Logs | Resource::Snapshots => p.action == Action::Read,
            _ => true,
        })
        .collect()
}

/// The built-in `member` role: reads what concerns their teams, issues their virtual keys.
pub fn member_permissions() -> BTreeSet<Perm> {
    use Resource::*;
    [
        read(Teams),
        read(Profiles),
        read(VirtualKeys),
        write(VirtualKeys),
        read(Tools),
        read(Policies),
        read(Prices),
        read(Limits),
        read(McpServers),
        read(Logs),
    ]
    .into_iter()
    .collect()
}

/// The built-in `proxy` role: what a proxy's token needs and nothing more.
pub fn proxy_permissions() -> BTreeSet<Perm> {
    [read(Resource::Snapshots), write(Resource::Usage)]
        .into_iter()
        .collect()
}

/// Parses a stored permission list.
pub fn parse_permissions(json: &str) -> BTreeSet<Perm> {
    serde_json::from_str::<Vec<String>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Who is calling, once their key checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The admin key's id.
    pub key_id: String,
    /// The member the key belongs to.
    pub member_id: String,
    /// Their organisation.
    pub org_id: String,
    /// Their role's name.
    pub role: String,
    /// What the role grants.
    pub permissions: BTreeSet<Perm>,
    /// True when the role sees every team's profiles and MCP servers.
    pub all_teams: bool,
    /// The member's teams (ids).
    pub teams: Vec<String>,
}

impl Principal {
    /// True when the role grants `p`.
    pub fn can(&self, p: Perm) -> bool {
        self.permissions.contains(&p)
    }

    /// True when the caller sees things owned by `team` (`None`: no team).
    pub fn sees_team(&self, team: Option<&str>) -> bool {
        self.all_teams || team.is_some_and(|t| self.teams.iter().any(|m| m == t))
    }
}

/// Reads `Authorization: Bearer <admin key>` and loads the principal.
pub async fn authenticate(state: &AppState, header: Option<&str>) -> Result<Principal, ApiError> {
    let missing = || {
        ApiError::Unauthorized(
            "send an admin API key as 'Authorization: Bearer sluice-admin-…'".into(),
        )
    };
    let token = header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(missing)?;
    let invalid = || ApiError::Unauthorized("the admin API key is not valid".into());
    let (id, secret) = split_key(ADMIN_KEY_PREFIX, token).ok_or_else(invalid)?;
    let row = sqlx::query(
        "SELECT k.salt, k.digest, k.expires_at, k.revoked_at, k.member_id, k.org_id, \
         r.name AS role_name, r.permissions, r.all_teams, m.teams \
         FROM admin_keys k JOIN members m ON m.id = k.member_id JOIN roles r ON r.id = m.role_id \
         WHERE k.id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(invalid)?;
    let salt: String = row.try_get("salt")?;
    let digest: String = row.try_get("digest")?;
    if !verify(&salt, &digest, secret) {
        return Err(invalid());
    }
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    let expires: Option<i64> = row.try_get("expires_at")?;
    if revoked.is_some() {
        return Err(ApiError::Unauthorized(
            "the admin API key was revoked".into(),
        ));
    }
    if expires.is_some_and(|e| e <= now_ms()) {
        return Err(ApiError::Unauthorized("the admin API key expired".into()));
    }
    let perms: String = row.try_get("permissions")?;
    let teams: String = row.try_get("teams")?;
    let all_teams: i64 = row.try_get("all_teams")?;
    Ok(Principal {
        key_id: id.to_owned(),
        member_id: row.try_get("member_id")?,
        org_id: row.try_get("org_id")?,
        role: row.try_get("role_name")?,
        permissions: parse_permissions(&perms),
        all_teams: all_teams != 0,
        teams: serde_json::from_str(&teams).unwrap_or_default(),
    })
}

/// The layer every route gets: authenticate, then check the route's permission.
pub async fn require(
    State((state, perm)): State<(AppState, Perm)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = authenticate(&state, header).await?;
    if !principal.can(perm) {
        return Err(ApiError::Forbidden(format!(
            "role '{}' does not grant {perm}",
            principal.role
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
