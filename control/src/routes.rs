//! The route table: every operation of `/api/v1`, its permission, schemas and handler.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use serde_json::Value;

use crate::auth::{Resource::*, read, write};
use crate::documents::{
    self as docs, Doc, DocKind, LimitBody, McpServerBody, OptimisationRuleBody, Page, Paging,
    PriceBody, ProfileBody, RateLimitBody, ToolBody,
};
use crate::error::ApiError;
use crate::openapi::{ApiBuilder, Method::*, Op, RouteInfo};
use crate::state::AppState;
use crate::{
    identity as id, leases, mcp_tools, ops, runtime, secrets, statistics, usage, usage_mcp,
};

/// The five routes of one document kind.
fn documents<K: DocKind>(
    b: ApiBuilder,
    list: &'static str,
    item: &'static str,
    resource: crate::auth::Resource,
    tag: &'static str,
) -> ApiBuilder {
    b.add(
        Op::new(Get, list, read(resource), tag, "List")
            .query::<Paging>()
            .ok::<Page<Doc<K>>>(200),
        docs::list::<K>,
    )
    .add(
        Op::new(Post, list, write(resource), tag, "Create")
            .body::<K>()
            .ok::<Doc<K>>(201),
        docs::create::<K>,
    )
    .add(
        Op::new(Get, item, read(resource), tag, "Get one").ok::<Doc<K>>(200),
        docs::get::<K>,
    )
    .add(
        Op::new(Put, item, write(resource), tag, "Replace")
            .body::<K>()
            .ok::<Doc<K>>(200),
        docs::replace::<K>,
    )
    .add(
        Op::new(Delete, item, write(resource), tag, "Delete").no_content(),
        docs::delete::<K>,
    )
}

/// Builds the API: the router for `/api/v1`, the OpenAPI document, the route table.
pub fn api(state: AppState) -> (Router<AppState>, Value, Vec<RouteInfo>) {
    let b = ApiBuilder::new(state)
        .add(
            Op::new(Get, "/me", read(Members), "identity", "The caller").ok::<id::Me>(200),
            id::me,
        )
        .add(
            Op::new(
                Get,
                "/organisations",
                read(Organisations),
                "identity",
                "List organisations",
            )
            .query::<Paging>()
            .ok::<Page<id::Organisation>>(200),
            id::list_orgs,
        )
        .add(
            Op::new(
                Post,
                "/organisations",
                write(Organisations),
                "identity",
                "Create an organisation",
            )
            .body::<id::NewOrganisation>()
            .ok::<id::Organisation>(201),
            id::post_org,
        )
        .add(
            Op::new(Get, "/teams", read(Teams), "identity", "List teams")
                .query::<Paging>()
                .ok::<Page<id::Team>>(200),
            id::list_teams,
        )
        .add(
            Op::new(Post, "/teams", write(Teams), "identity", "Create a team")
                .body::<id::NewTeam>()
                .ok::<id::Team>(201),
            id::post_team,
        )
        .add(
            Op::new(Get, "/teams/{id}", read(Teams), "identity", "Get a team").ok::<id::Team>(200),
            id::get_team,
        )
        .add(
            Op::new(
                Delete,
                "/teams/{id}",
                write(Teams),
                "identity",
                "Delete a team",
            )
            .no_content(),
            id::delete_team,
        )
        .add(
            Op::new(Get, "/roles", read(Roles), "identity", "List roles")
                .query::<Paging>()
                .ok::<Page<id::Role>>(200),
            id::list_roles,
        )
        .add(
            Op::new(
                Post,
                "/roles",
                write(Roles),
                "identity",
                "Create a custom role",
            )
            .body::<id::NewRole>()
            .ok::<id::Role>(201),
            id::post_role,
        )
        .add(
            Op::new(Get, "/roles/{id}", read(Roles), "identity", "Get a role").ok::<id::Role>(200),
            id::get_role,
        )
        .add(
            Op::new(
                Delete,
                "/roles/{id}",
                write(Roles),
                "identity",
                "Delete a custom role",
            )
            .no_content(),
            id::delete_role,
        )
        .add(
            Op::new(Get, "/members", read(Members), "identity", "List members")
                .query::<Paging>()
                .ok::<Page<id::Member>>(200),
            id::list_members,
        )
        .add(
            Op::new(Post, "/members", write(Members), "identity", "Add a member")
                .body::<id::NewMember>()
                .ok::<id::Member>(201),
            id::post_member,
        )
        .add(
            Op::new(
                Get,
                "/members/{id}",
                read(Members),
                "identity",
                "Get a member",
            )
            .ok::<id::Member>(200),
            id::get_member,
        )
        .add(
            Op::new(
                Delete,
                "/members/{id}",
                write(Members),
                "identity",
                "Remove a member",
            )
            .no_content(),
            id::delete_member,
        )
        .add(
            Op::new(
                Get,
                "/admin-keys",
                read(AdminKeys),
                "identity",
                "List admin API keys",
            )
            .query::<Paging>()
            .ok::<Page<id::AdminKey>>(200),
            id::list_admin_keys,
        )
        .add(
            Op::new(
                Post,
                "/admin-keys",
                write(AdminKeys),
                "identity",
                "Create an admin API key (shown once)",
            )
            .body::<id::NewAdminKey>()
            .ok::<id::CreatedAdminKey>(201),
            id::post_admin_key,
        )
        .add(
            Op::new(
                Delete,
                "/admin-keys/{id}",
                write(AdminKeys),
                "identity",
                "Revoke an admin API key",
            )
            .no_content(),
            id::revoke_admin_key,
        )
        .add(
            Op::new(
                Get,
                "/credentials",
                read(Credentials),
                "keys",
                "List provider credentials",
            )
            .query::<Paging>()
            .ok::<Page<secrets::Credential>>(200),
            secrets::list_credentials,
        )
        .add(
            Op::new(
                Post,
                "/credentials",
                write(Credentials),
                "keys",
                "Store a provider credential (encrypted, never returned)",
            )
            .body::<secrets::NewCredential>()
            .ok::<secrets::Credential>(201),
            secrets::post_credential,
        )
        .add(
            Op::new(
                Get,
                "/credentials/{id}",
                read(Credentials),
                "keys",
                "Get a credential's record",
            )
            .ok::<secrets::Credential>(200),
            secrets::get_credential,
        )
        .add(
            Op::new(
                Delete,
                "/credentials/{id}",
                write(Credentials),
                "keys",
                "Delete a credential",
            )
            .no_content(),
            secrets::delete_credential,
        )
        .add(
            Op::new(
                Get,
                "/virtual-keys",
                read(VirtualKeys),
                "keys",
                "List virtual keys",
            )
            .query::<Paging>()
            .ok::<Page<secrets::VirtualKey>>(200),
            secrets::list_virtual_keys,
        )
        .add(
            Op::new(
                Post,
                "/virtual-keys",
                write(VirtualKeys),
                "keys",
                "Create a virtual key (shown once)",
            )
            .body::<secrets::NewVirtualKey>()
            .ok::<secrets::CreatedVirtualKey>(201),
            secrets::post_virtual_key,
        )
        .add(
            Op::new(
                Get,
                "/virtual-keys/{id}",
                read(VirtualKeys),
                "keys",
                "Get a virtual key's record",
            )
            .ok::<secrets::VirtualKey>(200),
            secrets::get_virtual_key,
        )
        .add(
            Op::new(
                Delete,
                "/virtual-keys/{id}",
                write(VirtualKeys),
                "keys",
                "Revoke a virtual key",
            )
            .no_content(),
            secrets::revoke_virtual_key,
        );
    let b = documents::<ProfileBody>(b, "/profiles", "/profiles/{id}", Profiles, "profiles");
    let b = documents::<ToolBody>(b, "/tools", "/tools/{id}", Tools, "tools");
    let b = documents::<sluice_policies::InvocationPolicy>(
        b,
        "/policies/invocation",
        "/policies/invocation/{id}",
        Policies,
        "policies",
    );
    let b = documents::<sluice_policies::ResultPolicy>(
        b,
        "/policies/result",
        "/policies/result/{id}",
        Policies,
        "policies",
    );
    let b = documents::<PriceBody>(b, "/prices", "/prices/{id}", Prices, "cost");
    let b = documents::<LimitBody>(b, "/limits", "/limits/{id}", Limits, "cost");
    let b = documents::<RateLimitBody>(b, "/rate-limits", "/rate-limits/{id}", Limits, "cost");
    let b = documents::<OptimisationRuleBody>(
        b,
        "/optimisation-rules",
        "/optimisation-rules/{id}",
        OptimisationRules,
        "cost",
    );
    let b = documents::<McpServerBody>(b, "/mcp-servers", "/mcp-servers/{id}", McpServers, "mcp");
    let b = b
        .add(
            Op::new(
                Get,
                "/approvals",
                read(Approvals),
                "policies",
                "List approvals in force",
            )
            .query::<Paging>()
            .ok::<Page<ops::Approval>>(200),
            ops::list_approvals,
        )
        .add(
            Op::new(
                Post,
                "/approvals",
                write(Approvals),
                "policies",
                "Approve one exact call",
            )
            .body::<ops::NewApproval>()
            .ok::<ops::Approval>(201),
            ops::post_approval,
        )
        .add(
            Op::new(
                Delete,
                "/approvals/{id}",
                write(Approvals),
                "policies",
                "Withdraw an approval",
            )
            .no_content(),
            ops::delete_approval,
        )
        .add(
            Op::new(Get, "/logs/llm", read(Logs), "logs", "Search LLM call logs")
                .query::<usage::LlmFilter>()
                .ok::<Page<usage::LlmCall>>(200),
            usage::llm_logs,
        )
        .add(
            Op::new(Get, "/logs/mcp", read(Logs), "logs", "Search MCP call logs")
                .query::<usage_mcp::McpFilter>()
                .ok::<Page<usage_mcp::McpCall>>(200),
            usage_mcp::mcp_logs,
        )
        .add(
            Op::new(
                Get,
                "/usage/summary",
                read(Logs),
                "logs",
                "Sum requests, tokens and cost",
            )
            .query::<usage::LlmFilter>()
            .ok::<usage::UsageSummary>(200),
            usage::summary,
        )
        .add(
            Op::new(
                Get,
                "/usage/statistics",
                read(Logs),
                "logs",
                "Spend and tokens by organisation, team, profile, key, provider, model and time bucket",
            )
            .query::<statistics::StatisticsQuery>()
            .ok::<statistics::Statistics>(200),
            statistics::statistics,
        )
        .add(
            Op::new(
                Post,
                "/usage/batches",
                write(Usage),
                "proxies",
                "A proxy ships journal records (idempotent)",
            )
            .body::<usage::UsageBatch>()
            .ok::<usage::UsageAck>(200),
            usage::ingest,
        )
        .add(
            Op::new(
                Post,
                "/proxy/leases",
                write(Usage),
                "proxies",
                "A proxy process renews its shares of the spend limits",
            )
            .body::<sluice_proxy::lease::LeaseRequest>()
            .ok::<sluice_proxy::lease::LeaseAnswer>(200),
            leases::grant,
        )
        .add(
            Op::new(
                Get,
                "/limits/{id}/standing",
                read(Limits),
                "cost",
                "A spend limit's current window: authoritative spend, commitments, live holders",
            )
            .ok::<leases::LimitStanding>(200),
            leases::standing,
        )
        .add(
            Op::new(
                Get,
                "/snapshots/latest",
                read(Snapshots),
                "proxies",
                "The newest snapshot",
            )
            .ok::<ops::SnapshotView>(200),
            ops::latest,
        )
        .add(
            Op::new(
                Get,
                "/snapshots/watch",
                read(Snapshots),
                "proxies",
                "Long poll for a newer snapshot",
            )
            .query::<ops::WatchQuery>()
            .ok::<ops::SnapshotView>(200)
            .or_no_content(),
            ops::watch,
        )
        .add(
            Op::new(
                Get,
                "/mcp-servers/{id}/runtime",
                read(McpServers),
                "mcp runtime",
                "A server's Deployment and pods on Kubernetes",
            )
            .ok::<runtime::routes::RuntimeStatus>(200),
            runtime::routes::status,
        )
        .add(
            Op::new(
                Get,
                "/mcp-servers/{id}/logs",
                read(McpServers),
                "mcp runtime",
                "The last lines of a server's pods' logs",
            )
            .query::<runtime::routes::LogQuery>()
            .ok::<runtime::routes::ServerLogs>(200),
            runtime::routes::logs,
        )
        .add(
            Op::new(
                Post,
                "/mcp-servers/{id}/restart",
                write(McpServers),
                "mcp runtime",
                "Roll a server's pods",
            )
            .ok::<runtime::routes::Restarted>(202),
            runtime::routes::restart,
        )
        .add(
            Op::new(
                Get,
                "/mcp-servers/{id}/tools",
                read(McpServers),
                "mcp",
                "A server's tools as proxies report them, against its approved definitions",
            )
            .ok::<mcp_tools::ServerTools>(200),
            mcp_tools::list,
        )
        .add(
            Op::new(
                Post,
                "/mcp-servers/{id}/tools/approve",
                write(McpServers),
                "mcp",
                "Approve the definitions a server offers now (pins their hashes)",
            )
            .body::<mcp_tools::ApproveBody>()
            .ok::<mcp_tools::ServerTools>(200),
            mcp_tools::approve,
        )
        .add(
            Op::new(
                Post,
                "/mcp-inventory",
                write(Usage),
                "proxies",
                "A proxy reports a server's tool list",
            )
            .body::<mcp_tools::InventoryReport>()
            .ok::<mcp_tools::InventoryAck>(200),
            mcp_tools::report,
        )
        .add(
            Op::new(
                Post,
                "/mcp-runtime/reconcile",
                write(McpServers),
                "mcp runtime",
                "Bring the cluster in line with the catalogue now",
            )
            .ok::<runtime::ReconcileReport>(200),
            runtime::routes::reconcile,
        )
        .add(
            Op::new(
                Get,
                "/proxies",
                read(Snapshots),
                "proxies",
                "Proxies and what they acknowledged",
            )
            .query::<Paging>()
            .ok::<Page<ops::ProxyStatus>>(200),
            ops::proxies,
        );
    b.finish()
}

/// The whole application: `/api/v1/…`, `/api/v1/openapi.json` (public), `/healthz`.
pub fn app(state: AppState) -> (Router, Vec<RouteInfo>) {
    let (api, doc, routes) = api(state.clone());
    let doc = std::sync::Arc::new(doc);
    let api = api
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        );
    let router = Router::new()
        .nest("/api/v1", api)
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .fallback(|| async {
            ApiError::NotFound("no such route; see /api/v1/openapi.json".into()).into_response()
        })
        .method_not_allowed_fallback(|| async {
            (
                http::StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({"error": {"type": "method_not_allowed",
                    "message": "this route does not take that method; see /api/v1/openapi.json"}})),
            )
                .into_response()
        })
        .layer(DefaultBodyLimit::max(8 << 20))
        .with_state(state);
    (router, routes)
}
