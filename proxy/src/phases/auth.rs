//! Virtual keys on the request path: find the key where the client's SDK sends its provider
//! key, check it against the snapshot's digests, route a URL without a profile to the key's
//! profile, and count failures per client address. No database, no network: the snapshot
//! holds everything.

use std::net::IpAddr;

use pingora::proxy::Session;

use crate::config::Config;
use crate::error::SluiceError;
use crate::keys::{FailedAuthLimiter, KeyRefusal, VIRTUAL_KEY_PREFIX, VirtualKey, check};
use crate::route::Route;

/// The credential the client sent, in any SDK's header.
fn presented_key(session: &Session) -> Option<&str> {
    let h = &session.req_header().headers;
    let [authorization, others @ ..] = &crate::header_names::CREDENTIALS;
    if let Some(v) = h.get(authorization).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim(),
        );
    }
    others
        .iter()
        .find_map(|name| h.get(name).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn refuse_if_blocked(
    ip: Option<IpAddr>,
    config: &Config,
    limiter: &FailedAuthLimiter,
) -> Result<(), SluiceError> {
    match ip.and_then(|ip| limiter.blocked(ip, config.limits.max_failed_auth_per_minute)) {
        Some(wait) => Err(SluiceError::TooManyFailedAuth(wait)),
        None => Ok(()),
    }
}

/// Checks a virtual key if the request carries one (before routing, so the key can choose
/// the profile). A request with another kind of key, or none, gets `Ok(None)`.
pub fn verify_key(
    session: &Session,
    config: &Config,
    limiter: &FailedAuthLimiter,
) -> Result<Option<VirtualKey>, SluiceError> {
    let Some(key) = presented_key(session).filter(|k| k.starts_with(VIRTUAL_KEY_PREFIX)) else {
        return Ok(None);
    };
    let ip = client_ip(session);
    refuse_if_blocked(ip, config, limiter)?;
    match check(&config.virtual_keys, key) {
        Ok(e) => Ok(Some(e)),
        Err(refusal) => {
            if let Some(ip) = ip {
                limiter.failed(ip);
            }
            Err(match refusal {
                KeyRefusal::Invalid => SluiceError::VirtualKeyInvalid,
                KeyRefusal::Expired => SluiceError::VirtualKeyExpired,
            })
        }
    }
}

/// After routing: the key must belong to the routed profile, a profile that needs a key must
/// have one, and a keyed request must have a provider credential to send instead.
pub fn authorize(
    session: &Session,
    config: &Config,
    limiter: &FailedAuthLimiter,
    route: &Route,
    key: Option<&VirtualKey>,
) -> Result<(), SluiceError> {
    let Some(key) = key else {
        if route.profile.require_virtual_key {
            let ip = client_ip(session);
            refuse_if_blocked(ip, config, limiter)?;
            if let Some(ip) = ip {
                limiter.failed(ip);
            }
            return Err(SluiceError::VirtualKeyRequired(
                route.profile.name.to_string(),
            ));
        }
        return Ok(());
    };
    if *route.profile.name != *key.profile {
        return Err(SluiceError::VirtualKeyWrongProfile {
            key_profile: key.profile.to_string(),
            url_profile: route.profile.name.to_string(),
        });
    }
    // The virtual key must never reach the provider: the profile's own key replaces it.
    let has_credential = route
        .profile
        .upstreams
        .get(&route.provider)
        .is_some_and(|u| u.api_key.is_some());
    if !has_credential {
        return Err(SluiceError::NoProviderCredential {
            profile: route.profile.name.to_string(),
            provider: route.provider.as_str(),
        });
    }
    Ok(())
}
