//! Sessions with the embedded server's service, in this process. A session
//! is a [`StepClient`] over a channel link whose serving task calls the
//! service — the same client, pipelining and cancel-safety as over TCP,
//! with no socket and no frames. The token is checked once, when the
//! session is made; its requests are then served as that identity.
//! Each session has its own [`ConnState`], as a connection over the wire
//! has: it lives as long as the session's link, so a session's UPLOADs
//! stay bound to the upload its SAVE started.

use std::net::IpAddr;
use std::sync::Arc;

use step_core::StepClient;
use step_core::access::{Identity, Scope};
use step_core::link::serve_in_process;
use step_server::binding::ConnState;
use step_server::service::Service;

use super::token::refusal;
use crate::error::GatewayError;

/// A session acting for `token`'s identity (checked here, once), or for
/// nobody when `token` is empty (the readiness probe, the public LOGIN).
pub(super) async fn session(
    service: &Arc<Service>,
    token: &str,
) -> Result<StepClient, GatewayError> {
    let identity = if token.is_empty() {
        None
    } else {
        Some(service.identity_of(token).await.map_err(refusal)?)
    };
    Ok(client(service, identity, None, token))
}

/// A session for a LOGIN, which the service paces by `peer`, the HTTP
/// client's address.
pub(super) fn login_session(service: &Arc<Service>, peer: Option<IpAddr>) -> StepClient {
    client(service, None, peer, "")
}

/// What a Bearer `token` allows (a refusal is the answer).
pub(super) async fn scope_of(service: &Service, token: &str) -> Result<Scope, GatewayError> {
    let identity = service.identity_of(token).await.map_err(refusal)?;
    Ok(identity.scope)
}

/// A client whose requests the service answers as `identity`, or, with
/// none, each checked by its own token (LOGINs paced by `peer`).
fn client(
    service: &Arc<Service>,
    identity: Option<Identity>,
    peer: Option<IpAddr>,
    token: &str,
) -> StepClient {
    let served = Arc::clone(service);
    let identity = identity.map(Arc::new);
    // The session's state, as a connection's over the wire (requests may
    // run at once here; ConnState locks only around its own list).
    let conn = Arc::new(ConnState::new());
    let link = serve_in_process(move |msg| {
        let service = Arc::clone(&served);
        let identity = identity.clone();
        let conn = Arc::clone(&conn);
        async move {
            match identity {
                Some(identity) => service.serve_as(&identity, msg, &conn).await,
                None => service.serve_message(msg, peer).await,
            }
        }
    });
    let mut client = StepClient::over(link);
    client.set_token(token);
    client.set_capabilities(service.capabilities());
    client
}
